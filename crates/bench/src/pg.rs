//! PostgreSQL through tokio-postgres: one JSONB document per row keyed by `_id`, REPEATABLE
//! READ transactions, `synchronous_commit = on` (the script starts the server with it), and
//! serialization failures (40001) and deadlocks (40P01) retried.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use crate::rng::Rng;
use crate::workload::lock_order;
use crate::workload::{
    MAX_ATTEMPTS, OPENING_BALANCE, Op, OpOutcome, OrderArgs, PAD, Shared, TxnOp, Worker, Workload,
    item_price,
};

const TABLES: [&str; 7] = [
    "accounts",
    "customers",
    "items",
    "stock",
    "orders",
    "order_lines",
    "inserts",
];

pub async fn connect(conninfo: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL ({conninfo}): {e}; is it running?"))?;
    tokio::spawn(async move {
        // Errors surface on the client's next query; a closed connection ends this task.
        let _ = connection.await;
    });
    Ok(client)
}

fn fail(what: &str, e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "PostgreSQL ({what}): {} [{}]",
            db.message(),
            db.code().code()
        ),
        None => format!("PostgreSQL ({what}): {e}"),
    }
}

/// Checks the settings that make the comparison fair and returns them for the report.
pub async fn check_settings(client: &Client) -> Result<String, String> {
    let mut report = Vec::new();
    for (name, want) in [
        ("fsync", Some("on")),
        ("synchronous_commit", Some("on")),
        ("wal_sync_method", None),
        ("shared_buffers", None),
    ] {
        let row = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map_err(|e| fail("SHOW", e))?;
        let value: String = row.get(0);
        if let Some(want) = want.filter(|w| value != *w) {
            return Err(format!(
                "PostgreSQL has {name} = {value}; the comparison needs {name} = {want} (start it with -c {name}={want})"
            ));
        }
        report.push(format!("{name}={value}"));
    }
    Ok(report.join(", "))
}

pub async fn version(client: &Client) -> String {
    match client.query_one("SHOW server_version", &[]).await {
        Ok(row) => row.get(0),
        Err(e) => format!("unknown ({e})"),
    }
}

/// WAL fdatasyncs so far (`pg_stat_wal.wal_sync`, PostgreSQL 14+). Backends publish their
/// counts when idle for a second or on exit, so read it after the cell's connections closed.
pub async fn wal_syncs(client: &Client) -> Option<u64> {
    let row = client
        .query_one("SELECT wal_sync FROM pg_stat_wal", &[])
        .await
        .ok()?;
    Some(row.get::<_, i64>(0) as u64)
}

async fn insert_rows(client: &Client, table: &str, rows: Vec<(i64, Value)>) -> Result<(), String> {
    let (ids, docs): (Vec<i64>, Vec<Value>) = rows.into_iter().unzip();
    client
        .execute(
            &format!(
                "INSERT INTO {table} (id, doc) SELECT * FROM unnest($1::bigint[], $2::jsonb[])"
            ),
            &[&ids, &docs],
        )
        .await
        .map_err(|e| fail(table, e))?;
    Ok(())
}

/// Recreates the tables and loads the same documents as Mangrove gets.
pub async fn load(client: &Client, shared: &Shared) -> Result<(), String> {
    for t in TABLES {
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id bigint PRIMARY KEY, doc jsonb NOT NULL)"
            ))
            .await
            .map_err(|e| fail("create tables", e))?;
    }
    let s = shared.sizes;
    let sets: [crate::mongo::LoadSet<Value>; 4] = [
        (
            "accounts",
            s.accounts,
            |i| json!({"_id": i, "bal": OPENING_BALANCE, "owner": format!("account-{i}"), "pad": PAD}),
        ),
        (
            "customers",
            s.customers,
            |i| json!({"_id": i, "name": format!("customer-{i}"), "discount": 0.05, "credit": "GC", "balance": 0.0, "pad": PAD}),
        ),
        (
            "items",
            s.items,
            |i| json!({"_id": i, "name": format!("item-{i}"), "price": item_price(i), "data": PAD}),
        ),
        (
            "stock",
            s.items,
            |i| json!({"_id": i, "qty": 100_000, "ytd": 0, "order_cnt": 0, "dist": &PAD[..24]}),
        ),
    ];
    for (table, n, make) in sets {
        let ids: Vec<i64> = (0..n as i64).collect();
        for chunk in ids.chunks(1000) {
            insert_rows(client, table, chunk.iter().map(|&i| (i, make(i))).collect()).await?;
        }
    }
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .map_err(|e| fail("VACUUM ANALYZE", e))?;
    Ok(())
}

struct Statements {
    account: Statement,
    set_balance: Statement,
    customer: Statement,
    items: Statement,
    stock: Statement,
    order: Statement,
    lines: Statement,
    insert: Statement,
}

pub struct PgWorker {
    client: Client,
    st: Statements,
    rng: Rng,
    shared: Arc<Shared>,
}

impl PgWorker {
    pub async fn new(conninfo: &str, shared: Arc<Shared>, seed: u64) -> Result<Self, String> {
        let client = connect(conninfo).await?;
        // Prepared once per connection: an unprepared query costs tokio-postgres a second
        // round trip, which would handicap PostgreSQL.
        let prep = async |sql: &str| client.prepare(sql).await.map_err(|e| fail("prepare", e));
        let st = Statements {
            account: prep("SELECT doc FROM accounts WHERE id = $1").await?,
            set_balance: prep(
                "UPDATE accounts SET doc = jsonb_set(doc, '{bal}', to_jsonb($2::bigint)) WHERE id = $1",
            )
            .await?,
            customer: prep("SELECT doc FROM customers WHERE id = $1").await?,
            items: prep("SELECT id, doc FROM items WHERE id = ANY($1)").await?,
            stock: prep(
                "UPDATE stock SET doc = doc || jsonb_build_object('qty', (doc->>'qty')::bigint - $2, \
                 'ytd', (doc->>'ytd')::bigint + $2, 'order_cnt', (doc->>'order_cnt')::bigint + 1) WHERE id = $1",
            )
            .await?,
            order: prep("INSERT INTO orders (id, doc) VALUES ($1, $2)").await?,
            lines: prep(
                "INSERT INTO order_lines (id, doc) SELECT * FROM unnest($1::bigint[], $2::jsonb[])",
            )
            .await?,
            insert: prep("INSERT INTO inserts (id, doc) VALUES ($1, $2)").await?,
        };
        Ok(PgWorker {
            client,
            st,
            rng: Rng::new(seed),
            shared,
        })
    }
}

enum BodyError {
    Db(tokio_postgres::Error),
    Missing(String),
}

impl From<tokio_postgres::Error> for BodyError {
    fn from(e: tokio_postgres::Error) -> Self {
        BodyError::Db(e)
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

async fn transfer_body(
    c: &Client,
    st: &Statements,
    (from, to, amount): (i64, i64, i64),
) -> Result<(), BodyError> {
    let ids = lock_order(from, to);
    let mut balances = [0i64; 2];
    for (slot, id) in balances.iter_mut().zip(ids) {
        let row = c
            .query_opt(&st.account, &[&id])
            .await?
            .ok_or_else(|| BodyError::Missing(format!("account {id}")))?;
        let doc: Value = row.get(0);
        *slot = doc["bal"]
            .as_i64()
            .ok_or_else(|| BodyError::Missing(format!("account {id} balance")))?;
    }
    let delta = if ids[0] == from { -amount } else { amount };
    c.execute(&st.set_balance, &[&ids[0], &(balances[0] + delta)])
        .await?;
    c.execute(&st.set_balance, &[&ids[1], &(balances[1] - delta)])
        .await?;
    Ok(())
}

async fn order_body(
    c: &Client,
    st: &Statements,
    order_id: i64,
    args: &OrderArgs,
) -> Result<(), BodyError> {
    let customer: Value = c
        .query_opt(&st.customer, &[&args.customer])
        .await?
        .ok_or_else(|| BodyError::Missing(format!("customer {}", args.customer)))?
        .get(0);
    let discount = customer["discount"].as_f64().unwrap_or(0.0);
    let ids: Vec<i64> = args.lines.iter().map(|l| l.0).collect();
    let rows = c.query(&st.items, &[&ids]).await?;
    if rows.len() != ids.len() {
        return Err(BodyError::Missing(format!(
            "items: found {} of {}",
            rows.len(),
            ids.len()
        )));
    }
    let mut total = 0.0;
    for row in rows {
        let id: i64 = row.get(0);
        let item: Value = row.get(1);
        let qty = args.lines.iter().find(|l| l.0 == id).map_or(0, |l| l.1);
        total += item["price"].as_f64().unwrap_or(0.0) * qty as f64;
    }
    for &(item, qty) in &args.lines {
        c.execute(&st.stock, &[&item, &qty]).await?;
    }
    let order = json!({
        "_id": order_id, "c_id": args.customer, "ol_cnt": args.lines.len(),
        "total": total * (1.0 - discount),
    });
    c.execute(&st.order, &[&order_id, &order]).await?;
    let (line_ids, lines): (Vec<i64>, Vec<Value>) = args
        .lines
        .iter()
        .enumerate()
        .map(|(n, &(item, qty))| {
            let id = order_id * 16 + n as i64;
            let line = json!({
                "_id": id, "o_id": order_id, "i_id": item, "qty": qty,
                "amount": item_price(item) * qty as f64,
            });
            (id, line)
        })
        .unzip();
    c.execute(&st.lines, &[&line_ids, &lines]).await?;
    Ok(())
}

impl PgWorker {
    async fn transaction(&mut self, txn: &TxnOp) -> Result<OpOutcome, String> {
        let mut aborts = 0;
        while aborts < MAX_ATTEMPTS {
            let c = &self.client;
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .await
                .map_err(|e| fail("BEGIN", e))?;
            let body = match txn {
                TxnOp::Transfer(args) => transfer_body(c, &self.st, *args).await,
                TxnOp::Order(order_id, args) => order_body(c, &self.st, *order_id, args).await,
            };
            let result = match body {
                Ok(()) => c.batch_execute("COMMIT").await.map_err(BodyError::Db),
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            };
            match result {
                Ok(()) => {
                    return Ok(OpOutcome {
                        committed: true,
                        aborts,
                    });
                }
                Err(BodyError::Db(e)) if retryable(&e) => aborts += 1,
                Err(BodyError::Db(e)) => return Err(fail("transaction", e)),
                Err(BodyError::Missing(what)) => {
                    return Err(format!(
                        "PostgreSQL: {what} not found; was the data loaded?"
                    ));
                }
            }
        }
        Err(format!(
            "PostgreSQL: gave up after {MAX_ATTEMPTS} aborted attempts of one transaction"
        ))
    }
}

impl Worker for PgWorker {
    async fn op(&mut self, workload: Workload) -> Result<OpOutcome, String> {
        match Op::draw(workload, &mut self.rng, &self.shared) {
            Op::Txn(txn) => self.transaction(&txn).await,
            Op::PointRead(id) => match self.client.query_opt(&self.st.account, &[&id]).await {
                Ok(Some(row)) => {
                    let _doc: Value = row.get(0);
                    Ok(OpOutcome {
                        committed: false,
                        aborts: 0,
                    })
                }
                Ok(None) => Err(format!("PostgreSQL: account {id} not found")),
                Err(e) => Err(fail("point read", e)),
            },
            Op::Insert(id) => {
                let doc = json!({"_id": id, "n": id, "pad": PAD});
                self.client
                    .execute(&self.st.insert, &[&id, &doc])
                    .await
                    .map_err(|e| fail("insert", e))?;
                Ok(OpOutcome {
                    committed: true,
                    aborts: 0,
                })
            }
        }
    }
}
