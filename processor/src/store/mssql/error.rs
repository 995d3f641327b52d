//! SQL Server error mapping: server error numbers and driver failures to the small `ErrorKind` set the retry policy
//! understands.

use crate::store::{ErrorKind, StoreError};

/// What a server error number means. Severity (`class`) 20 and above terminates the connection: transient.
pub fn kind_of_number(number: u32, class: u8) -> ErrorKind {
    match number {
        // Deadlock victim, lock request timeout (SET LOCK_TIMEOUT), snapshot update conflict.
        1205 | 1222 | 3960 => ErrorKind::Conflict,
        // 2627 / 2601 unique or primary key, 515 NOT NULL, 547 CHECK / FOREIGN KEY, 8152 / 2628 string
        // truncation, 245 / 8114 / 241 / 242 conversion, 8115 / 220 arithmetic overflow.
        2627 | 2601 | 515 | 547 | 8152 | 2628 | 245 | 8114 | 241 | 242 | 8115 | 220 => {
            ErrorKind::Constraint
        }
        // Connection-level: 233 / 10053 / 10054 / 10060 / 10061 transport, 4060 cannot open database (also seen
        // while a restarted server recovers it), 922 database being recovered, 701 / 8645 / 1204 resources,
        // 40197 / 40501 / 40613 / 40143 / 40540 / 49918-49920 / 10928 / 10929 Azure SQL failover and throttling,
        // 601 a READUNCOMMITTED probe (claim) hit data movement.
        601 | 233 | 10053 | 10054 | 10060 | 10061 | 4060 | 922 | 701 | 8645 | 1204 | 40197
        | 40501 | 40613 | 40143 | 40540 | 49918 | 49919 | 49920 | 10928 | 10929 => {
            ErrorKind::Transient
        }
        _ if class >= 20 => ErrorKind::Transient,
        _ => ErrorKind::Fatal,
    }
}

/// Classifies a TLS failure: a torn connection during the handshake is transient, a rejected certificate is not.
fn tls_kind(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    let transient = [
        "reset",
        "timed out",
        "timeout",
        "eof",
        "broken pipe",
        "connection",
        "aborted",
    ];
    if transient.iter().any(|t| m.contains(t)) {
        ErrorKind::Transient
    } else {
        ErrorKind::Fatal
    }
}

pub fn kind_of(e: &tiberius::error::Error) -> ErrorKind {
    use tiberius::error::Error as E;
    match e {
        E::Server(t) => kind_of_number(t.code(), t.class()),
        // I/O (reset, closed, timed out, including tiberius' own command and handshake timeouts).
        E::Io { .. } => ErrorKind::Transient,
        // A protocol error almost always means a torn or desynchronised connection: reconnect and retry.
        E::Protocol(_) => ErrorKind::Transient,
        // The server asked us to reconnect elsewhere (Azure gateway); `connect` follows it once.
        E::Routing { .. } => ErrorKind::Transient,
        E::Tls(m) => tls_kind(m),
        // SQL Browser timeouts surface as conversion errors.
        E::Conversion(m) if m.to_ascii_lowercase().contains("browser") => ErrorKind::Transient,
        _ => ErrorKind::Fatal,
    }
}

pub fn classify(op: &'static str, e: tiberius::error::Error) -> StoreError {
    let message = match &e {
        tiberius::error::Error::Server(t) => {
            format!("{} (error {}, state {})", t.message(), t.code(), t.state())
        }
        other => other.to_string(),
    };
    let kind = kind_of(&e);
    StoreError::new(kind, op, message).with_cause(e)
}

/// A unique or primary key violation (2627, 2601).
pub fn is_duplicate(e: &tiberius::error::Error) -> bool {
    matches!(e, tiberius::error::Error::Server(t) if matches!(t.code(), 2627 | 2601))
}

/// `map_err` helper: `.map_err(err("insert rows"))`.
pub fn err(op: &'static str) -> impl Fn(tiberius::error::Error) -> StoreError {
    move |e| classify(op, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiberius::error::{Error, IoErrorKind};

    #[test]
    fn numbers_map_to_kinds() {
        for n in [1205, 1222] {
            assert_eq!(kind_of_number(n, 13), ErrorKind::Conflict, "{n}");
        }
        for n in [2627, 2601, 515, 547, 8152, 2628, 245, 8114, 241] {
            assert_eq!(kind_of_number(n, 16), ErrorKind::Constraint, "{n}");
        }
        for n in [40613, 40197, 40501, 10928, 10929, 4060, 233, 10053, 10054] {
            assert_eq!(kind_of_number(n, 16), ErrorKind::Transient, "{n}");
        }
        for n in [208, 207, 102, 18456, 3902, 6401] {
            assert_eq!(kind_of_number(n, 16), ErrorKind::Fatal, "{n}");
        }
        // Severity 20+ kills the connection, whatever the number.
        assert_eq!(kind_of_number(9999, 20), ErrorKind::Transient);
    }

    #[test]
    fn driver_errors_map_to_kinds() {
        let io = Error::Io {
            kind: IoErrorKind::ConnectionReset,
            message: "reset".into(),
        };
        assert_eq!(kind_of(&io), ErrorKind::Transient);
        assert_eq!(
            kind_of(&Error::Tls("connection reset by peer".into())),
            ErrorKind::Transient
        );
        assert_eq!(
            kind_of(&Error::Tls("certificate verify failed".into())),
            ErrorKind::Fatal
        );
        assert_eq!(kind_of(&Error::Utf8), ErrorKind::Fatal);
        assert_eq!(
            kind_of(&Error::Protocol("unexpected token".into())),
            ErrorKind::Transient
        );
        let e = classify("connect", io);
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.op, "connect");
    }
}
