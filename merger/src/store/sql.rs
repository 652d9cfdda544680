//! What the transactions both backends share are written over: a statement and its arguments
//! ([`query`]), run on either database's connection ([`Conn`]), and the rows it answers read by
//! column ([`Read`]). Statements number their parameters `$1`, `$2`, …, which sqlx binds by
//! number on SQLite too; where the SQL itself differs, [`Backend`](super::backend::Backend)
//! says how.

use std::borrow::Cow;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::StoreError;

/// A value bound to a statement's parameter.
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    /// An integer.
    Int(Option<i64>),
    /// Text.
    Text(Option<Cow<'a, str>>),
    /// A flag.
    Bool(bool),
    /// Bytes.
    Bytes(&'a [u8]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(Cow::Borrowed(v)))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(Cow::Borrowed(v)))
    }
}

impl From<String> for Arg<'_> {
    fn from(v: String) -> Self {
        Arg::Text(Some(Cow::Owned(v)))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v.map(Cow::Borrowed))
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}

/// A statement with its arguments, to run on a [`Conn`].
#[derive(Debug, Clone)]
pub struct Query<'a> {
    sql: Cow<'a, str>,
    args: Vec<Arg<'a>>,
}

/// The statement `sql`, with no argument bound yet.
pub fn query<'a>(sql: impl Into<Cow<'a, str>>) -> Query<'a> {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

impl<'a> Query<'a> {
    /// Binds the next parameter.
    #[must_use]
    pub fn bind(mut self, arg: impl Into<Arg<'a>>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs it; answers how many rows it changed.
    pub async fn execute<C: Conn + ?Sized>(self, conn: &mut C) -> Result<u64, StoreError> {
        conn.execute(self).await
    }

    /// Runs it; answers its rows.
    pub async fn fetch_all<C: Conn + ?Sized>(
        self,
        conn: &mut C,
    ) -> Result<Vec<C::Row>, StoreError> {
        conn.fetch_all(self).await
    }

    /// Runs it; answers its first row, if any.
    pub async fn fetch_optional<C: Conn + ?Sized>(
        self,
        conn: &mut C,
    ) -> Result<Option<C::Row>, StoreError> {
        conn.fetch_optional(self).await
    }

    /// Runs it; answers its first row, an error if there is none.
    pub async fn fetch_one<C: Conn + ?Sized>(self, conn: &mut C) -> Result<C::Row, StoreError> {
        conn.fetch_optional(self)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }
}

/// A connection of either database (a transaction's, or the pool's), as the shared
/// transactions run statements on it.
#[async_trait]
pub trait Conn: Send {
    /// The rows it answers.
    type Row: Read + Send + Sync;

    /// Runs `query`; answers how many rows it changed.
    async fn execute(&mut self, query: Query<'_>) -> Result<u64, StoreError>;

    /// Runs `query`; answers its rows.
    async fn fetch_all(&mut self, query: Query<'_>) -> Result<Vec<Self::Row>, StoreError>;

    /// Runs `query`; answers its first row, if any.
    async fn fetch_optional(&mut self, query: Query<'_>) -> Result<Option<Self::Row>, StoreError>;
}

/// `query` as sqlx's, its arguments bound in order.
fn bound<'q, DB>(query: &'q Query<'_>) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    &'q [u8]: Encode<'q, DB> + Type<DB>,
{
    query
        .args
        .iter()
        .fold(sqlx::query(&query.sql), |q, arg| match arg {
            Arg::Int(v) => q.bind(*v),
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Bool(v) => q.bind(*v),
            Arg::Bytes(v) => q.bind(*v),
        })
}

#[async_trait]
impl<C> Conn for C
where
    C: sqlx::Connection,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    for<'q> <C::Database as Database>::Arguments<'q>: IntoArguments<'q, C::Database>,
    <C::Database as Database>::Row: Read,
    <C::Database as Database>::QueryResult: Changed,
    for<'q> Option<i64>: Encode<'q, C::Database> + Type<C::Database>,
    for<'q> Option<&'q str>: Encode<'q, C::Database> + Type<C::Database>,
    for<'q> bool: Encode<'q, C::Database> + Type<C::Database>,
    for<'q> &'q [u8]: Encode<'q, C::Database> + Type<C::Database>,
{
    type Row = <C::Database as Database>::Row;

    async fn execute(&mut self, query: Query<'_>) -> Result<u64, StoreError> {
        let done = bound::<C::Database>(&query).execute(self).await?;
        Ok(done.rows_affected())
    }

    async fn fetch_all(&mut self, query: Query<'_>) -> Result<Vec<Self::Row>, StoreError> {
        Ok(bound::<C::Database>(&query).fetch_all(self).await?)
    }

    async fn fetch_optional(&mut self, query: Query<'_>) -> Result<Option<Self::Row>, StoreError> {
        Ok(bound::<C::Database>(&query).fetch_optional(self).await?)
    }
}

/// How many rows a statement changed, as each database's result says it.
pub trait Changed {
    /// The count.
    fn rows_affected(&self) -> u64;
}

impl Changed for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Changed for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// A row of either database, read by column name; a value of another type than asked, or
/// an unknown column, is an error.
pub trait Read {
    /// An integer.
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    /// An integer or null.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    /// Text.
    fn text(&self, column: &str) -> Result<&str, StoreError>;
    /// Text or null.
    fn opt_text(&self, column: &str) -> Result<Option<&str>, StoreError>;
    /// A flag.
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
    /// Bytes.
    fn bytes(&self, column: &str) -> Result<&[u8], StoreError>;
}

impl<R> Read for R
where
    R: sqlx::Row,
    for<'i> &'i str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<&'r str>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn text(&self, column: &str) -> Result<&str, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> Result<Option<&str>, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        Ok(self.try_get(column)?)
    }

    fn bytes(&self, column: &str) -> Result<&[u8], StoreError> {
        Ok(self.try_get(column)?)
    }
}
