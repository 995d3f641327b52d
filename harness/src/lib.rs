//! stub
pub mod check;
