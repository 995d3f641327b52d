//! Column types and values after mapping, with their canonical text. Pure; knows nothing of SQL drivers.
//! The canonical text is what every backend returns for `CAST(col AS TEXT)`, so the checker can compare it.

use std::fmt;

/// A target column's type, parsed from the contract's `data_type` / `data_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    SmallInt,
    Int,
    BigInt,
    /// `decimal(precision, scale)`.
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// `varchar`, `nvarchar`, `char`, `text`: at most `max_chars` characters when given.
    Text {
        max_chars: Option<u32>,
    },
    Date,
    DateTime,
    Bit,
}

impl ColType {
    /// Parses `data_type` (case-insensitive) with the optional `data_length`.
    pub fn parse(data_type: &str, data_length: Option<u32>) -> Result<Self, String> {
        let t = data_type.trim().to_ascii_lowercase();
        let (base, args) = match t.split_once('(') {
            Some((b, rest)) => {
                let inner = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("unbalanced parentheses in data_type '{data_type}'"))?;
                (b.trim().to_owned(), Some(inner.to_owned()))
            }
            None => (t.clone(), None),
        };
        Ok(match base.as_str() {
            "smallint" | "tinyint" => ColType::SmallInt,
            "int" | "integer" => ColType::Int,
            "bigint" => ColType::BigInt,
            "decimal" | "numeric" | "money" => {
                let (p, s) = match args {
                    Some(a) => {
                        let mut it = a.split(',').map(|x| x.trim().parse::<u8>());
                        let p = it
                            .next()
                            .and_then(|r| r.ok())
                            .ok_or_else(|| format!("bad precision in '{data_type}'"))?;
                        let s = match it.next() {
                            Some(r) => r.map_err(|_| format!("bad scale in '{data_type}'"))?,
                            None => 0,
                        };
                        (p, s)
                    }
                    None => (18, 2),
                };
                if p == 0 || p > 38 || s > p {
                    return Err(format!(
                        "decimal precision/scale out of range in '{data_type}'"
                    ));
                }
                ColType::Decimal {
                    precision: p,
                    scale: s,
                }
            }
            "varchar" | "nvarchar" | "char" | "nchar" | "text" | "string" => {
                let from_args = match args {
                    Some(a) if a.trim().eq_ignore_ascii_case("max") => None,
                    Some(a) => Some(
                        a.trim()
                            .parse::<u32>()
                            .map_err(|_| format!("bad length in '{data_type}'"))?,
                    ),
                    None => None,
                };
                ColType::Text {
                    max_chars: data_length.or(from_args),
                }
            }
            "date" => ColType::Date,
            "datetime" | "datetime2" | "timestamp" => ColType::DateTime,
            "bit" | "boolean" | "bool" => ColType::Bit,
            other => return Err(format!("unsupported data_type '{other}'")),
        })
    }

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColType::SmallInt
                | ColType::Int
                | ColType::BigInt
                | ColType::Decimal { .. }
                | ColType::Bit
        )
    }

    pub fn name(self) -> String {
        match self {
            ColType::SmallInt => "smallint".into(),
            ColType::Int => "int".into(),
            ColType::BigInt => "bigint".into(),
            ColType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            ColType::Text { .. } => "varchar".into(),
            ColType::Date => "date".into(),
            ColType::DateTime => "datetime".into(),
            ColType::Bit => "bit".into(),
        }
    }
}

/// A mapped value. Decimals, dates and datetimes carry their canonical text (bound as text and cast in SQL),
/// which keeps the write path exact and identical on every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    Null,
    Int(i64),
    Decimal(String),
    Text(String),
    Date(String),
    DateTime(String),
    Bit(bool),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Canonical text, `None` for NULL.
    pub fn canonical(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Int(i) => Some(i.to_string()),
            Value::Bit(b) => Some(if *b { "1" } else { "0" }.to_owned()),
            Value::Decimal(s) | Value::Text(s) | Value::Date(s) | Value::DateTime(s) => {
                Some(s.clone())
            }
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bit(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// Text form for binding as a string parameter (decimals, dates, text).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Decimal(s) | Value::Text(s) | Value::Date(s) | Value::DateTime(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.canonical() {
            Some(s) => f.write_str(&s),
            None => f.write_str("NULL"),
        }
    }
}

/// Why a raw value does not fit a type; the mapping turns it into a `map:` failure naming the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    Invalid,
    TooLong { len: usize, max: u32 },
}

/// Converts raw attribute text to `ty` (contract README, step 5).
pub fn convert(raw: &str, ty: ColType) -> Result<Value, ConvertError> {
    match ty {
        ColType::SmallInt => {
            parse_int(raw, i64::from(i16::MIN), i64::from(i16::MAX)).map(Value::Int)
        }
        ColType::Int => parse_int(raw, i64::from(i32::MIN), i64::from(i32::MAX)).map(Value::Int),
        ColType::BigInt => parse_int(raw, i64::MIN, i64::MAX).map(Value::Int),
        ColType::Bit => match raw.trim() {
            "0" => Ok(Value::Bit(false)),
            "1" => Ok(Value::Bit(true)),
            _ => Err(ConvertError::Invalid),
        },
        ColType::Decimal { precision, scale } => {
            parse_decimal(raw, precision, scale).map(Value::Decimal)
        }
        ColType::Text { max_chars } => {
            if let Some(max) = max_chars {
                let len = raw.chars().count();
                if len > max as usize {
                    return Err(ConvertError::TooLong { len, max });
                }
            }
            Ok(Value::Text(raw.to_owned()))
        }
        ColType::Date => {
            parse_date(raw).map(|(y, m, d)| Value::Date(format!("{y:04}-{m:02}-{d:02}")))
        }
        ColType::DateTime => parse_datetime(raw).map(Value::DateTime),
    }
}

fn parse_int(raw: &str, min: i64, max: i64) -> Result<i64, ConvertError> {
    let t = raw.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConvertError::Invalid);
    }
    let v: i64 = t.parse().map_err(|_| ConvertError::Invalid)?;
    if v < min || v > max {
        return Err(ConvertError::Invalid);
    }
    Ok(v)
}

/// Exact decimal parsing and half-away-from-zero rounding on digit strings (no floating point).
pub fn parse_decimal(raw: &str, precision: u8, scale: u8) -> Result<String, ConvertError> {
    let t = raw.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ConvertError::Invalid);
    }
    let scale = scale as usize;
    // Digits of the unscaled integer at `scale + 1` fraction digits, then round on the last one.
    let mut frac: String = frac_part.chars().take(scale + 1).collect();
    while frac.len() < scale + 1 {
        frac.push('0');
    }
    let round_up = frac.as_bytes()[scale] >= b'5';
    frac.truncate(scale);
    let mut digits: Vec<u8> = int_part
        .bytes()
        .chain(frac.bytes())
        .map(|b| b - b'0')
        .collect();
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, 1);
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - scale;
    let int_digits: String = digits[..split]
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect();
    let int_digits = int_digits.trim_start_matches('0');
    let int_digits = if int_digits.is_empty() {
        "0"
    } else {
        int_digits
    };
    if int_digits != "0" && int_digits.len() > (precision as usize).saturating_sub(scale) {
        return Err(ConvertError::Invalid);
    }
    let frac_digits: String = digits[split..]
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect();
    let is_zero = int_digits == "0" && frac_digits.bytes().all(|b| b == b'0');
    let sign = if neg && !is_zero { "-" } else { "" };
    Ok(if scale == 0 {
        format!("{sign}{int_digits}")
    } else {
        format!("{sign}{int_digits}.{frac_digits}")
    })
}

fn parse_date(raw: &str) -> Result<(i32, u32, u32), ConvertError> {
    let t = raw.trim();
    let b = t.as_bytes();
    let num = |s: &str| -> Result<u32, ConvertError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ConvertError::Invalid);
        }
        s.parse().map_err(|_| ConvertError::Invalid)
    };
    let (y, m, d) = if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        (num(&t[0..4])?, num(&t[5..7])?, num(&t[8..10])?)
    } else if b.len() == 10 && b[2] == b'/' && b[5] == b'/' {
        (num(&t[6..10])?, num(&t[0..2])?, num(&t[3..5])?)
    } else {
        return Err(ConvertError::Invalid);
    };
    let y = i32::try_from(y).map_err(|_| ConvertError::Invalid)?;
    chrono::NaiveDate::from_ymd_opt(y, m, d).ok_or(ConvertError::Invalid)?;
    Ok((y, m, d))
}

fn parse_datetime(raw: &str) -> Result<String, ConvertError> {
    let t = raw.trim();
    if t.len() == 10 {
        let (y, m, d) = parse_date(t)?;
        if t.as_bytes()[4] != b'-' {
            return Err(ConvertError::Invalid);
        }
        return Ok(format!("{y:04}-{m:02}-{d:02} 00:00:00"));
    }
    let b = t.as_bytes();
    if b.len() != 19 || !(b[10] == b'T' || b[10] == b' ') || b[4] != b'-' {
        return Err(ConvertError::Invalid);
    }
    let (y, m, d) = parse_date(&t[..10])?;
    let time = &t[11..];
    let tb = time.as_bytes();
    if tb[2] != b':'
        || tb[5] != b':'
        || !time
            .bytes()
            .enumerate()
            .all(|(i, c)| i == 2 || i == 5 || c.is_ascii_digit())
    {
        return Err(ConvertError::Invalid);
    }
    let hh: u32 = time[0..2].parse().map_err(|_| ConvertError::Invalid)?;
    let mm: u32 = time[3..5].parse().map_err(|_| ConvertError::Invalid)?;
    let ss: u32 = time[6..8].parse().map_err(|_| ConvertError::Invalid)?;
    if hh > 23 || mm > 59 || ss > 59 {
        return Err(ConvertError::Invalid);
    }
    Ok(format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}"))
}

/// Renders an f64 for conversion to a column type: no exponent, enough digits to round correctly.
pub fn f64_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.9}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_half_away_from_zero_exactly() {
        assert_eq!(parse_decimal("4500", 12, 2), Ok("4500.00".into()));
        assert_eq!(parse_decimal("1.005", 12, 2), Ok("1.01".into()));
        assert_eq!(parse_decimal("-1.005", 12, 2), Ok("-1.01".into()));
        assert_eq!(parse_decimal("9.995", 3, 2), Err(ConvertError::Invalid));
        assert_eq!(parse_decimal("9.995", 4, 2), Ok("10.00".into()));
        assert_eq!(parse_decimal(".5", 4, 0), Ok("1".into()));
        assert_eq!(parse_decimal("-0.001", 4, 2), Ok("0.00".into()));
        assert_eq!(parse_decimal("1,000", 12, 2), Err(ConvertError::Invalid));
        assert_eq!(parse_decimal("", 12, 2), Err(ConvertError::Invalid));
    }

    #[test]
    fn dates_and_datetimes() {
        assert_eq!(
            convert("02/29/2024", ColType::Date),
            Ok(Value::Date("2024-02-29".into()))
        );
        assert_eq!(
            convert("2023-02-29", ColType::Date),
            Err(ConvertError::Invalid)
        );
        assert_eq!(
            convert("31/02/1990", ColType::Date),
            Err(ConvertError::Invalid)
        );
        assert_eq!(
            convert("2023-04-05T10:22:31", ColType::DateTime),
            Ok(Value::DateTime("2023-04-05 10:22:31".into()))
        );
        assert_eq!(
            convert("2023-04-05", ColType::DateTime),
            Ok(Value::DateTime("2023-04-05 00:00:00".into()))
        );
        assert_eq!(
            convert("2023-13-45T99:00:00", ColType::DateTime),
            Err(ConvertError::Invalid)
        );
    }

    #[test]
    fn ints_and_text_limits() {
        assert_eq!(convert(" 42 ", ColType::Int), Ok(Value::Int(42)));
        assert_eq!(
            convert("99999999999", ColType::Int),
            Err(ConvertError::Invalid)
        );
        assert_eq!(convert("4.5", ColType::Int), Err(ConvertError::Invalid));
        assert_eq!(
            convert("héllo", ColType::Text { max_chars: Some(5) }),
            Ok(Value::Text("héllo".into()))
        );
        assert_eq!(
            convert("héllo!", ColType::Text { max_chars: Some(5) }),
            Err(ConvertError::TooLong { len: 6, max: 5 })
        );
    }

    #[test]
    fn parses_data_types() {
        assert_eq!(
            ColType::parse("decimal(12,2)", None),
            Ok(ColType::Decimal {
                precision: 12,
                scale: 2
            })
        );
        assert_eq!(
            ColType::parse("VARCHAR", Some(20)),
            Ok(ColType::Text {
                max_chars: Some(20)
            })
        );
        assert!(ColType::parse("blob", None).is_err());
    }
}
