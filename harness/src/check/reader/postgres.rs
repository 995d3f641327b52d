//! The checker's PostgreSQL reader (a read-only session) and the PostgreSQL spelling of the checker's SQL
//! (`PgSql`): `"x"` quoting, schema-qualified names, `::text` casts, `information_schema` for the catalogue.

use super::{Dialect, Reader, SqlDialect};
use crate::check::CheckError;

/// PostgreSQL over the simple-query protocol, which returns every value in its text form.
pub struct PgReader {
    client: postgres::Client,
}

impl PgReader {
    pub fn connect(url: &str) -> Result<Self, CheckError> {
        let pg =
            processor::store::url::PgUrl::parse(url).map_err(|e| CheckError::Db(e.to_string()))?;
        let mut client = pg.connect().map_err(|e| {
            CheckError::Db(format!(
                "cannot connect to {pg}: {}",
                processor::store::postgres::error::with_causes(&e)
            ))
        })?;
        // Read-only at the session level: a bug here cannot change the database under judgement.
        client
            .batch_execute(PG_READ_ONLY)
            .map_err(|e| CheckError::Db(format!("cannot make the session read-only: {e}")))?;
        Ok(PgReader { client })
    }
}

impl Reader for PgReader {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn query_text(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, CheckError> {
        let msgs = self
            .client
            .simple_query(sql)
            .map_err(|e| CheckError::Db(format!("query failed: {e}: {sql}")))?;
        let mut out = Vec::new();
        for m in msgs {
            if let postgres::SimpleQueryMessage::Row(r) = m {
                out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
            }
        }
        Ok(out)
    }

    /// The extended protocol's row stream (rows are read off the socket as they are handed on); the columns are
    /// `::text` casts, so each arrives as text.
    fn query_each(
        &mut self,
        sql: &str,
        each: &mut dyn FnMut(Vec<Option<String>>) -> Result<(), CheckError>,
    ) -> Result<(), CheckError> {
        use postgres::fallible_iterator::FallibleIterator;
        let err = |e: postgres::Error| {
            CheckError::Db(format!(
                "query failed: {}: {sql}",
                processor::store::postgres::error::with_causes(&e)
            ))
        };
        let none: [&(dyn postgres::types::ToSql + Sync); 0] = [];
        let mut rows = self.client.query_raw(sql, none).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let mut vals = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                vals.push(
                    r.try_get::<_, Option<&str>>(i)
                        .map_err(err)?
                        .map(str::to_owned),
                );
            }
            each(vals)?;
        }
        Ok(())
    }
}

const PG_READ_ONLY: &str = "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY";

/// PostgreSQL's SQL.
pub(super) struct PgSql;

impl SqlDialect for PgSql {
    fn quote(&self, ident: &str) -> String {
        format!("\"{ident}\"")
    }
    fn name_literal(&self, ident: &str) -> String {
        format!("'{ident}'")
    }
    fn qualify(&self, schema: &str, table: &str) -> String {
        format!("{}.{}", self.quote(schema), self.quote(table))
    }
    fn cast_text(&self, expr: &str) -> String {
        format!("{expr}::text")
    }
    fn compared_columns(&self, schema: &str, table: &str) -> String {
        format!(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = '{schema}' \
             AND table_name = '{table}' AND is_identity = 'NO' AND COALESCE(column_default, '') NOT LIKE 'nextval(%' \
             ORDER BY ordinal_position"
        )
    }
    fn table_exists(&self, schema: &str, table: &str) -> String {
        format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{schema}' AND table_name = '{table}'"
        )
    }
    fn column_exists(&self, schema: &str, table: &str, column: &str) -> String {
        format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = '{table}' \
             AND column_name = '{column}'"
        )
    }
}
