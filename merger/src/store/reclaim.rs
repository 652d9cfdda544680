//! Netting what rebased carries reclaimed against their counters' cuts
//! ([`CounterStore::reclaim_carries`](super::CounterStore::reclaim_carries)), for any
//! [`Backend`]: one carry's transaction.

use tally_crdt::GlobalTotals;

use super::backend::Backend;
use super::sql::query;
use super::{StoreError, encode_u128};

/// Nets `object`'s carry of `counter` (store ids, the object as its column holds it) in a
/// transaction of its own: what it reclaimed leaves it, its region's cut and the object's
/// share of the cut alike ([`net_reclaimed`](super::net_reclaimed)), so no count changes; a
/// carry left holding nothing is deleted, and so is a share left at zero. The counter is
/// locked first, as a reset locks it, so a reset's cuts never miss a netting. Returns whether
/// it netted (a carry gone, or not to net any more, is left as it is).
pub async fn net<B: Backend>(store: &B, counter: i64, object: &str) -> Result<bool, StoreError> {
    let mut tx = store.begin().await?;
    query(B::DIALECT.lock_counter_id())
        .bind(counter)
        .execute(&mut *tx)
        .await?;
    let (carry, lock) = (
        super::counters::carry_columns(B::DIALECT, ""),
        B::DIALECT.for_update(),
    );
    let carry = query(format!(
        "SELECT {carry} FROM carries WHERE counter = $1 AND object = $2{lock}"
    ))
    .bind(counter)
    .bind(object)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(carry) = carry.as_ref().map(super::carry_of).transpose()? else {
        return Ok(false);
    };
    let Some(cut) = totals::<B>(&mut tx, "cuts", counter, ("region", &carry.region)).await? else {
        return Ok(false);
    };
    let Some((left, empty)) = super::net_reclaimed(&carry, cut) else {
        return Ok(false);
    };
    set_totals::<B>(&mut tx, "cuts", counter, ("region", &carry.region), left).await?;
    let write = if empty {
        query("DELETE FROM carries WHERE counter = $1 AND object = $2")
            .bind(counter)
            .bind(object)
    } else {
        let numeric = B::DIALECT.numeric();
        query(format!(
            "UPDATE carries SET rp = $3{numeric}, rn = $3{numeric} \
             WHERE counter = $1 AND object = $2"
        ))
        .bind(counter)
        .bind(object)
        .bind(encode_u128(0))
    };
    write.execute(&mut *tx).await?;
    let share = ("object", object);
    if let Some(held) = totals::<B>(&mut tx, "object_cuts", counter, share).await? {
        let left = super::minus(held, carry.reclaimed);
        if left == GlobalTotals::default() {
            query("DELETE FROM object_cuts WHERE counter = $1 AND object = $2")
                .bind(counter)
                .bind(object)
                .execute(&mut *tx)
                .await?;
        } else {
            set_totals::<B>(&mut tx, "object_cuts", counter, share, left).await?;
        }
    }
    B::commit(tx).await?;
    Ok(true)
}

/// The totals of `counter`'s row of `table` (`cuts` or `object_cuts`) whose column `by.0`
/// holds `by.1`, locked; `None` when there is none.
async fn totals<B: Backend>(
    conn: &mut B::Conn,
    table: &'static str,
    counter: i64,
    (column, value): (&str, &str),
) -> Result<Option<GlobalTotals>, StoreError> {
    let (text, lock) = (B::DIALECT.text(), B::DIALECT.for_update());
    let row = query(format!(
        "SELECT p{text} AS p, n{text} AS n FROM {table} \
         WHERE counter = $1 AND {column} = $2{lock}"
    ))
    .bind(counter)
    .bind(value)
    .fetch_optional(conn)
    .await?;
    row.map(|row| super::totals_of(table, &row, ["p", "n"]))
        .transpose()
}

/// Sets the totals of `counter`'s row of `table` whose column `by.0` holds `by.1`.
async fn set_totals<B: Backend>(
    conn: &mut B::Conn,
    table: &'static str,
    counter: i64,
    (column, value): (&str, &str),
    totals: GlobalTotals,
) -> Result<(), StoreError> {
    let numeric = B::DIALECT.numeric();
    query(format!(
        "UPDATE {table} SET p = $3{numeric}, n = $4{numeric} \
         WHERE counter = $1 AND {column} = $2"
    ))
    .bind(counter)
    .bind(value)
    .bind(encode_u128(totals.p))
    .bind(encode_u128(totals.n))
    .execute(conn)
    .await?;
    Ok(())
}
