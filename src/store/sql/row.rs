//! A row of a result, decoded as its database encodes each type (see `driver`).
use super::driver::{corrupt, from_micros, map_err};
use crate::domain::SpiffeId;
use crate::store::StoreError;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::{Postgres, Row as _, Sqlite, TypeInfo, ValueRef};
use time::OffsetDateTime;
use uuid::Uuid;

/// One row of a result.
pub enum Row {
    Pg(PgRow),
    Lite(SqliteRow),
}

impl Row {
    fn get<'r, P, L>(&'r self, col: &str) -> Result<Result<P, L>, StoreError>
    where
        P: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
        L: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        match self {
            Row::Pg(r) => r.try_get(col).map(Ok),
            Row::Lite(r) => r.try_get(col).map(Err),
        }
        .map_err(map_err)
    }

    pub fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.get::<String, String>(col)?.unwrap_or_else(|s| s))
    }

    pub fn text_opt(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .get::<Option<String>, Option<String>>(col)?
            .unwrap_or_else(|s| s))
    }

    /// A SPIFFE ID stored as its text; one that does not parse is corrupt.
    pub fn spiffe_id(&self, col: &str) -> Result<SpiffeId, StoreError> {
        self.spiffe_id_opt(col)?
            .ok_or_else(|| corrupt(format!("{col} is NULL")))
    }

    pub fn spiffe_id_opt(&self, col: &str) -> Result<Option<SpiffeId>, StoreError> {
        self.text_opt(col)?
            .map(|s| SpiffeId::parse(&s).map_err(|e| corrupt(format!("{col} {s:?}: {e}"))))
            .transpose()
    }

    pub fn uuid(&self, col: &str) -> Result<Uuid, StoreError> {
        self.uuid_opt(col)?
            .ok_or_else(|| corrupt(format!("{col} is NULL")))
    }

    pub fn uuid_opt(&self, col: &str) -> Result<Option<Uuid>, StoreError> {
        match self.get::<Option<Uuid>, Option<String>>(col)? {
            Ok(v) => Ok(v),
            Err(s) => s
                .map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(format!("{col} {s:?}: {e}"))))
                .transpose(),
        }
    }

    pub fn time(&self, col: &str) -> Result<OffsetDateTime, StoreError> {
        self.time_opt(col)?
            .ok_or_else(|| corrupt(format!("{col} is NULL")))
    }

    pub fn time_opt(&self, col: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        match self.get::<Option<OffsetDateTime>, Option<i64>>(col)? {
            Ok(v) => Ok(v),
            Err(us) => us.map(from_micros).transpose(),
        }
    }

    /// An integer of any width.
    pub fn int_opt(&self, col: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Row::Pg(r) => {
                let raw = r.try_get_raw(col).map_err(map_err)?;
                let n = match raw.type_info().name() {
                    "INT2" => r.try_get::<Option<i16>, _>(col).map(|v| v.map(i64::from)),
                    "INT4" => r.try_get::<Option<i32>, _>(col).map(|v| v.map(i64::from)),
                    _ => r.try_get::<Option<i64>, _>(col),
                };
                n.map_err(map_err)
            }
            Row::Lite(r) => r.try_get(col).map_err(map_err),
        }
    }

    pub fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.int_opt(col)?
            .ok_or_else(|| corrupt(format!("{col} is NULL")))
    }

    pub fn u32(&self, col: &str) -> Result<u32, StoreError> {
        let n = self.int(col)?;
        u32::try_from(n).map_err(|e| corrupt(format!("{col} {n}: {e}")))
    }

    pub fn u64(&self, col: &str) -> Result<u64, StoreError> {
        let n = self.int(col)?;
        u64::try_from(n).map_err(|e| corrupt(format!("{col} {n}: {e}")))
    }

    pub fn bool(&self, col: &str) -> Result<bool, StoreError> {
        Ok(match self.get::<bool, i64>(col)? {
            Ok(b) => b,
            Err(n) => n != 0,
        })
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T, StoreError> {
        match self.get::<Json<serde_json::Value>, String>(col)? {
            Ok(Json(v)) => serde_json::from_value(v),
            Err(s) => serde_json::from_str(&s),
        }
        .map_err(|e| corrupt(format!("{col}: {e}")))
    }

    pub fn bytes_opt(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get::<Option<Vec<u8>>, Option<Vec<u8>>>(col)?
            .unwrap_or_else(|b| b))
    }

    pub fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        self.bytes_opt(col)?
            .ok_or_else(|| corrupt(format!("{col} is NULL")))
    }
}
