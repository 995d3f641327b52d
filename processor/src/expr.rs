//! The `calculated_field` expression language: arithmetic, comparisons and `CASE WHEN … THEN … ELSE … END`.
//! Parsed once when the contract loads; evaluated per row over already-converted column values. No SQL.

use crate::value::Value;

/// A scalar during evaluation: SQL-like NULL, a number, or a string.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Num(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Str(String),
    Col(String),
    Neg(Box<Expr>),
    Bin(Box<Expr>, ArithOp, Box<Expr>),
    Case(Vec<(Cond, Expr)>, Option<Box<Expr>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Cmp(Expr, CmpOp, Expr),
    IsNull(Expr, bool),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Word(String),
    Sym(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n = s[start..i]
                .parse::<f64>()
                .map_err(|_| format!("bad number '{}'", &s[start..i]))?;
            out.push(Tok::Num(n));
        } else if c == b'\'' {
            let mut lit = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                        lit.push('\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = s[i..].chars().next().ok_or("bad character")?;
                        lit.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push(Tok::Str(lit));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Word(s[start..i].to_owned()));
        } else {
            let two = s.get(i..i + 2).unwrap_or("");
            let sym: &'static str = match two {
                "<=" => "<=",
                ">=" => ">=",
                "<>" => "<>",
                "!=" => "!=",
                _ => match c {
                    b'+' => "+",
                    b'-' => "-",
                    b'*' => "*",
                    b'/' => "/",
                    b'(' => "(",
                    b')' => ")",
                    b'=' => "=",
                    b'<' => "<",
                    b'>' => ">",
                    _ => return Err(format!("unexpected character '{}'", char::from(c))),
                },
            };
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

const KEYWORDS: [&str; 9] = [
    "CASE", "WHEN", "THEN", "ELSE", "END", "AND", "OR", "IS", "NOT",
];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), String> {
        if self.is_kw(kw) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {kw}"))
        }
    }
    fn expr(&mut self) -> Result<Expr, String> {
        if self.is_kw("CASE") {
            self.pos += 1;
            let mut arms = Vec::new();
            while self.is_kw("WHEN") {
                self.pos += 1;
                let c = self.cond()?;
                self.expect_kw("THEN")?;
                let e = self.expr()?;
                arms.push((c, e));
            }
            if arms.is_empty() {
                return Err("CASE needs at least one WHEN".into());
            }
            let other = if self.is_kw("ELSE") {
                self.pos += 1;
                Some(Box::new(self.expr()?))
            } else {
                None
            };
            self.expect_kw("END")?;
            return Ok(Expr::Case(arms, other));
        }
        self.arith()
    }
    fn arith(&mut self) -> Result<Expr, String> {
        let mut lhs = self.term()?;
        loop {
            let op = if self.is_sym("+") {
                ArithOp::Add
            } else if self.is_sym("-") {
                ArithOp::Sub
            } else {
                return Ok(lhs);
            };
            self.pos += 1;
            lhs = Expr::Bin(Box::new(lhs), op, Box::new(self.term()?));
        }
    }
    fn term(&mut self) -> Result<Expr, String> {
        let mut lhs = self.factor()?;
        loop {
            let op = if self.is_sym("*") {
                ArithOp::Mul
            } else if self.is_sym("/") {
                ArithOp::Div
            } else {
                return Ok(lhs);
            };
            self.pos += 1;
            lhs = Expr::Bin(Box::new(lhs), op, Box::new(self.factor()?));
        }
    }
    fn factor(&mut self) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Num(n))
            }
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Str(s))
            }
            Some(Tok::Sym("-")) => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.factor()?)))
            }
            Some(Tok::Sym("(")) => {
                self.pos += 1;
                let e = self.expr()?;
                if !self.is_sym(")") {
                    return Err("expected ')'".into());
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("CASE") => self.expr(),
            Some(Tok::Word(w)) if KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                Err(format!("unexpected keyword {w}"))
            }
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Ok(Expr::Col(w))
            }
            Some(t) => Err(format!("unexpected token {t:?}")),
            None => Err("unexpected end of expression".into()),
        }
    }
    fn cond(&mut self) -> Result<Cond, String> {
        let mut lhs = self.cond_and()?;
        while self.is_kw("OR") {
            self.pos += 1;
            lhs = Cond::Or(Box::new(lhs), Box::new(self.cond_and()?));
        }
        Ok(lhs)
    }
    fn cond_and(&mut self) -> Result<Cond, String> {
        let mut lhs = self.pred()?;
        while self.is_kw("AND") {
            self.pos += 1;
            lhs = Cond::And(Box::new(lhs), Box::new(self.pred()?));
        }
        Ok(lhs)
    }
    fn pred(&mut self) -> Result<Cond, String> {
        // `( cond )` versus `( arith ) op …`: try the condition first, fall back to an arithmetic operand.
        if self.is_sym("(") {
            let save = self.pos;
            self.pos += 1;
            if let Ok(c) = self.cond() {
                if self.is_sym(")") {
                    self.pos += 1;
                    return Ok(c);
                }
            }
            self.pos = save;
        }
        let lhs = self.arith()?;
        if self.is_kw("IS") {
            self.pos += 1;
            let negated = if self.is_kw("NOT") {
                self.pos += 1;
                true
            } else {
                false
            };
            self.expect_kw("NULL")?;
            return Ok(Cond::IsNull(lhs, !negated));
        }
        let op = match self.peek() {
            Some(Tok::Sym("=")) => CmpOp::Eq,
            Some(Tok::Sym("<>")) | Some(Tok::Sym("!=")) => CmpOp::Ne,
            Some(Tok::Sym("<")) => CmpOp::Lt,
            Some(Tok::Sym("<=")) => CmpOp::Le,
            Some(Tok::Sym(">")) => CmpOp::Gt,
            Some(Tok::Sym(">=")) => CmpOp::Ge,
            _ => return Err("expected a comparison".into()),
        };
        self.pos += 1;
        Ok(Cond::Cmp(lhs, op, self.arith()?))
    }
}

/// Parses an expression; the error says what was expected.
pub fn parse(s: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected trailing input at token {}", p.pos + 1));
    }
    Ok(e)
}

impl Expr {
    /// Column names the expression reads.
    pub fn columns(&self, out: &mut Vec<String>) {
        match self {
            Expr::Col(c) => out.push(c.clone()),
            Expr::Neg(e) => e.columns(out),
            Expr::Bin(a, _, b) => {
                a.columns(out);
                b.columns(out);
            }
            Expr::Case(arms, other) => {
                for (c, e) in arms {
                    c.columns(out);
                    e.columns(out);
                }
                if let Some(e) = other {
                    e.columns(out);
                }
            }
            Expr::Num(_) | Expr::Str(_) => {}
        }
    }

    pub fn eval(&self, lookup: &dyn Fn(&str) -> Scalar) -> Scalar {
        match self {
            Expr::Num(n) => Scalar::Num(*n),
            Expr::Str(s) => Scalar::Str(s.clone()),
            Expr::Col(c) => lookup(c),
            Expr::Neg(e) => match e.eval(lookup) {
                Scalar::Num(n) => Scalar::Num(-n),
                _ => Scalar::Null,
            },
            Expr::Bin(a, op, b) => match (a.eval(lookup), b.eval(lookup)) {
                (Scalar::Num(x), Scalar::Num(y)) => match op {
                    ArithOp::Add => Scalar::Num(x + y),
                    ArithOp::Sub => Scalar::Num(x - y),
                    ArithOp::Mul => Scalar::Num(x * y),
                    ArithOp::Div if y == 0.0 => Scalar::Null,
                    ArithOp::Div => Scalar::Num(x / y),
                },
                _ => Scalar::Null,
            },
            Expr::Case(arms, other) => {
                for (c, e) in arms {
                    if c.eval(lookup) {
                        return e.eval(lookup);
                    }
                }
                other.as_ref().map_or(Scalar::Null, |e| e.eval(lookup))
            }
        }
    }
}

impl Cond {
    fn columns(&self, out: &mut Vec<String>) {
        match self {
            Cond::Cmp(a, _, b) => {
                a.columns(out);
                b.columns(out);
            }
            Cond::IsNull(e, _) => e.columns(out),
            Cond::And(a, b) | Cond::Or(a, b) => {
                a.columns(out);
                b.columns(out);
            }
        }
    }

    fn eval(&self, lookup: &dyn Fn(&str) -> Scalar) -> bool {
        match self {
            Cond::IsNull(e, want_null) => (e.eval(lookup) == Scalar::Null) == *want_null,
            Cond::And(a, b) => a.eval(lookup) && b.eval(lookup),
            Cond::Or(a, b) => a.eval(lookup) || b.eval(lookup),
            Cond::Cmp(a, op, b) => {
                let ord = match (a.eval(lookup), b.eval(lookup)) {
                    (Scalar::Num(x), Scalar::Num(y)) => x.partial_cmp(&y),
                    (Scalar::Str(x), Scalar::Str(y)) => Some(x.cmp(&y)),
                    _ => None,
                };
                let Some(o) = ord else { return false };
                match op {
                    CmpOp::Eq => o.is_eq(),
                    CmpOp::Ne => o.is_ne(),
                    CmpOp::Lt => o.is_lt(),
                    CmpOp::Le => o.is_le(),
                    CmpOp::Gt => o.is_gt(),
                    CmpOp::Ge => o.is_ge(),
                }
            }
        }
    }
}

/// A converted column value as an expression scalar.
pub fn scalar_of(v: &Value) -> Scalar {
    match v {
        Value::Null => Scalar::Null,
        Value::Int(i) => Scalar::Num(*i as f64),
        Value::Bit(b) => Scalar::Num(if *b { 1.0 } else { 0.0 }),
        Value::Decimal(s) => s.parse::<f64>().map_or(Scalar::Null, Scalar::Num),
        Value::Text(s) | Value::Date(s) | Value::DateTime(s) => Scalar::Str(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_with(src: &str, vars: &[(&str, Scalar)]) -> Scalar {
        let e = parse(src).expect("parses");
        e.eval(&|name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map_or(Scalar::Null, |(_, v)| v.clone())
        })
    }

    #[test]
    fn arithmetic_and_case() {
        assert_eq!(
            eval_with(
                "monthly_income * 12",
                &[("monthly_income", Scalar::Num(100.5))]
            ),
            Scalar::Num(1206.0)
        );
        assert_eq!(eval_with("1 + 2 * 3 - (4 - 1)", &[]), Scalar::Num(4.0));
        let band =
            "CASE WHEN risk_score >= 700 THEN 'A' WHEN risk_score >= 600 THEN 'B' ELSE 'C' END";
        assert_eq!(
            eval_with(band, &[("risk_score", Scalar::Num(720.0))]),
            Scalar::Str("A".into())
        );
        assert_eq!(
            eval_with(band, &[("risk_score", Scalar::Num(600.0))]),
            Scalar::Str("B".into())
        );
        assert_eq!(
            eval_with(band, &[]),
            Scalar::Str("C".into()),
            "NULL compares false"
        );
        assert_eq!(eval_with("x / 0", &[("x", Scalar::Num(1.0))]), Scalar::Null);
        assert_eq!(
            eval_with("CASE WHEN x IS NULL THEN 1 END", &[]),
            Scalar::Num(1.0)
        );
        assert_eq!(
            eval_with(
                "case when (a > 1 or a < -1) and b = 'y' then 1 else 0 end",
                &[("a", Scalar::Num(2.0)), ("b", Scalar::Str("y".into()))]
            ),
            Scalar::Num(1.0)
        );
        assert_eq!(
            eval_with("-x + 1", &[("x", Scalar::Num(3.0))]),
            Scalar::Num(-2.0)
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "1 +",
            "CASE END",
            "CASE WHEN a THEN 1 END",
            "'open",
            "a ; b",
            "1 2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
