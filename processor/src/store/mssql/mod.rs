//! SQL Server backend (tiberius). Placeholder until the backend lands.

pub mod config;

use super::{ErrorKind, StoreError};
use crate::contract::Contract;
use config::MssqlConfig;

pub struct MssqlStore;

impl MssqlStore {
    pub fn open(
        _cfg: &MssqlConfig,
        _contract: Contract,
    ) -> Result<Box<dyn super::Store>, StoreError> {
        Err(StoreError::new(
            ErrorKind::Fatal,
            "connect",
            "the SQL Server backend is not built yet",
        ))
    }
}
