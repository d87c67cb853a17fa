//! Mangrove through the official Rust driver: transactions committed with `w: "majority"`
//! (fdatasynced before the reply), retried on `TransientTransactionError`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{Document, doc};
use mongodb::error::{Error, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ClientOptions, CollectionOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection, Database};

use crate::rng::Rng;
use crate::workload::{
    MAX_ATTEMPTS, OPENING_BALANCE, Op, OpOutcome, OrderArgs, PAD, Shared, TxnOp, Worker, Workload,
    item_price, lock_order, transfer_args,
};

/// The database every workload uses.
pub const DB: &str = "bench";

pub async fn connect(uri: &str, max_clients: usize) -> Result<Client, String> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| format!("bad Mangrove URI {uri:?}: {e}"))?;
    // The default pool (10) would cap concurrency below the client counts measured.
    options.max_pool_size = Some(max_clients as u32 + 4);
    options.server_selection_timeout = Some(Duration::from_secs(10));
    options.app_name = Some("mangrove-bench".into());
    let client = Client::with_options(options).map_err(|e| format!("Mangrove client: {e}"))?;
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .map_err(|e| format!("cannot reach Mangrove at {uri}: {e}; is the server running?"))?;
    Ok(client)
}

/// A collection of `db` whose writes are committed with `w: "majority"`.
pub fn collection(db: &Database, name: &str) -> Collection<Document> {
    db.collection_with_options(
        name,
        CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build(),
    )
}

/// A collection to load: name, document count, and how to make document `i`.
pub type LoadSet<D> = (&'static str, u64, fn(i64) -> D);

fn account(i: i64) -> Document {
    doc! { "_id": i, "bal": OPENING_BALANCE, "owner": format!("account-{i}"), "pad": PAD }
}

fn customer(i: i64) -> Document {
    doc! { "_id": i, "name": format!("customer-{i}"), "discount": 0.05, "credit": "GC", "balance": 0.0, "pad": PAD }
}

fn item(i: i64) -> Document {
    doc! { "_id": i, "name": format!("item-{i}"), "price": item_price(i), "data": PAD }
}

fn stock(i: i64) -> Document {
    doc! { "_id": i, "qty": 100_000i64, "ytd": 0i64, "order_cnt": 0i64, "dist": &PAD[..24] }
}

/// Drops the `bench` database and loads the accounts, customers, items and stock.
pub async fn load(client: &Client, shared: &Shared) -> Result<(), String> {
    let db = client.database(DB);
    let fail = |what: &str, e: Error| format!("loading Mangrove ({what}): {e}");
    db.drop().await.map_err(|e| fail("drop", e))?;
    let s = shared.sizes;
    let sets: [LoadSet<Document>; 4] = [
        ("accounts", s.accounts, account),
        ("customers", s.customers, customer),
        ("items", s.items, item),
        ("stock", s.items, stock),
    ];
    for (name, n, make) in sets {
        let coll = collection(&db, name);
        let ids: Vec<i64> = (0..n as i64).collect();
        for chunk in ids.chunks(1000) {
            coll.insert_many(chunk.iter().map(|&i| make(i)))
                .await
                .map_err(|e| fail(name, e))?;
        }
    }
    // Created up front: a transaction creating them implicitly would measure DDL, not work.
    for name in ["orders", "order_lines", "inserts"] {
        db.create_collection(name)
            .await
            .map_err(|e| fail(name, e))?;
    }
    Ok(())
}

/// Version string from `buildInfo`, for the report.
pub async fn version(client: &Client) -> String {
    match client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
    {
        Ok(d) => d.get_str("version").unwrap_or("?").to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Group-commit rounds from `serverStatus`, if the server reports them. Mangrove's engine
/// counts them (`LogStats`), but `serverStatus` does not expose them yet; the caller then falls
/// back to the log writer thread's write count from /proc.
pub async fn server_log_batches(client: &Client) -> Option<u64> {
    let status = client
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .ok()?;
    let log = status
        .get_document("mangrove")
        .ok()?
        .get_document("log")
        .ok()?;
    match log.get("batches")? {
        bson::Bson::Int64(n) => Some(*n as u64),
        bson::Bson::Int32(n) => Some(*n as u64),
        _ => None,
    }
}

pub struct MongoWorker {
    session: ClientSession,
    accounts: Collection<Document>,
    customers: Collection<Document>,
    items: Collection<Document>,
    stock: Collection<Document>,
    orders: Collection<Document>,
    lines: Collection<Document>,
    inserts: Collection<Document>,
    rng: Rng,
    shared: Arc<Shared>,
}

impl MongoWorker {
    pub async fn new(client: &Client, shared: Arc<Shared>, seed: u64) -> Result<Self, String> {
        let db = client.database(DB);
        Ok(MongoWorker {
            session: client
                .start_session()
                .await
                .map_err(|e| format!("Mangrove session: {e}"))?,
            accounts: collection(&db, "accounts"),
            customers: collection(&db, "customers"),
            items: collection(&db, "items"),
            stock: collection(&db, "stock"),
            orders: collection(&db, "orders"),
            lines: collection(&db, "order_lines"),
            inserts: collection(&db, "inserts"),
            rng: Rng::new(seed),
            shared,
        })
    }
}

enum BodyError {
    Driver(Error),
    Missing(String),
}

impl From<Error> for BodyError {
    fn from(e: Error) -> Self {
        BodyError::Driver(e)
    }
}

async fn transfer_body(
    s: &mut ClientSession,
    accounts: &Collection<Document>,
    (from, to, amount): (i64, i64, i64),
) -> Result<(), BodyError> {
    let ids = lock_order(from, to);
    let mut balances = [0i64; 2];
    for (slot, id) in balances.iter_mut().zip(ids) {
        let d = accounts
            .find_one(doc! { "_id": id })
            .session(&mut *s)
            .await?
            .ok_or_else(|| BodyError::Missing(format!("account {id}")))?;
        *slot = d
            .get_i64("bal")
            .map_err(|e| BodyError::Missing(format!("account {id} balance: {e}")))?;
    }
    let delta = if ids[0] == from { -amount } else { amount };
    for (id, bal, change) in [(ids[0], balances[0], delta), (ids[1], balances[1], -delta)] {
        accounts
            .update_one(doc! { "_id": id }, doc! { "$set": { "bal": bal + change } })
            .session(&mut *s)
            .await?;
    }
    Ok(())
}

struct OrderColls<'a> {
    customers: &'a Collection<Document>,
    items: &'a Collection<Document>,
    stock: &'a Collection<Document>,
    orders: &'a Collection<Document>,
    lines: &'a Collection<Document>,
}

async fn order_body(
    s: &mut ClientSession,
    c: &OrderColls<'_>,
    order_id: i64,
    args: &OrderArgs,
) -> Result<(), BodyError> {
    let customer = c
        .customers
        .find_one(doc! { "_id": args.customer })
        .session(&mut *s)
        .await?
        .ok_or_else(|| BodyError::Missing(format!("customer {}", args.customer)))?;
    let discount = customer.get_f64("discount").unwrap_or(0.0);
    let ids: Vec<i64> = args.lines.iter().map(|l| l.0).collect();
    let mut cursor = c
        .items
        .find(doc! { "_id": { "$in": &ids } })
        .session(&mut *s)
        .await?;
    let mut total = 0.0;
    let mut found = 0;
    while let Some(item) = cursor.next(&mut *s).await {
        let item = item?;
        let id = item.get_i64("_id").unwrap_or(-1);
        let qty = args.lines.iter().find(|l| l.0 == id).map_or(0, |l| l.1);
        total += item.get_f64("price").unwrap_or(0.0) * qty as f64;
        found += 1;
    }
    if found != ids.len() {
        return Err(BodyError::Missing(format!(
            "items: found {found} of {}",
            ids.len()
        )));
    }
    for &(item, qty) in &args.lines {
        c.stock
            .update_one(
                doc! { "_id": item },
                doc! { "$inc": { "qty": -qty, "ytd": qty, "order_cnt": 1i64 } },
            )
            .session(&mut *s)
            .await?;
    }
    c.orders
        .insert_one(doc! {
            "_id": order_id, "c_id": args.customer, "ol_cnt": args.lines.len() as i64,
            "total": total * (1.0 - discount),
        })
        .session(&mut *s)
        .await?;
    let lines = args.lines.iter().enumerate().map(|(n, &(item, qty))| {
        doc! {
            "_id": order_id * 16 + n as i64, "o_id": order_id, "i_id": item, "qty": qty,
            "amount": item_price(item) * qty as f64,
        }
    });
    c.lines.insert_many(lines).session(&mut *s).await?;
    Ok(())
}

fn describe(e: &Error) -> String {
    format!("Mangrove: {e}")
}

impl MongoWorker {
    /// Runs `body` in transactions until one commits: the driver's `with_transaction` loop,
    /// written out so that aborted attempts are counted.
    async fn transaction(&mut self, txn: &TxnOp) -> Result<OpOutcome, String> {
        self.transaction_marked(txn, None).await.map(|(o, _)| o)
    }

    /// A uniform transfer (drawn as the transfer-uniform workload draws it) that also inserts
    /// `{_id: mark}` into `marks` in the same transaction, so that a change stream on `marks`
    /// sees exactly one event per commit. Also returns when the successful attempt sent its
    /// `commitTransaction`.
    pub async fn transfer_marked(
        &mut self,
        marks: &Collection<Document>,
        mark: i64,
    ) -> Result<(OpOutcome, Instant), String> {
        let args = transfer_args(&mut self.rng, &self.shared, false);
        self.transaction_marked(&TxnOp::Transfer(args), Some((marks, mark)))
            .await
    }

    /// The statements of one transaction, and the marker insert when there is one.
    async fn body_marked(
        &mut self,
        txn: &TxnOp,
        mark: Option<(&Collection<Document>, i64)>,
    ) -> Result<(), BodyError> {
        let body = match txn {
            TxnOp::Transfer(args) => transfer_body(&mut self.session, &self.accounts, *args).await,
            TxnOp::Order(order_id, args) => {
                let colls = OrderColls {
                    customers: &self.customers,
                    items: &self.items,
                    stock: &self.stock,
                    orders: &self.orders,
                    lines: &self.lines,
                };
                order_body(&mut self.session, &colls, *order_id, args).await
            }
        };
        match (body, mark) {
            (Ok(()), Some((marks, id))) => marks
                .insert_one(doc! { "_id": id })
                .session(&mut self.session)
                .await
                .map(|_| ())
                .map_err(BodyError::from),
            (body, _) => body,
        }
    }

    async fn transaction_marked(
        &mut self,
        txn: &TxnOp,
        mark: Option<(&Collection<Document>, i64)>,
    ) -> Result<(OpOutcome, Instant), String> {
        let mut aborts = 0;
        'attempt: while aborts < MAX_ATTEMPTS {
            self.session
                .start_transaction()
                .write_concern(WriteConcern::majority())
                .await
                .map_err(|e| describe(&e))?;
            if let Err(e) = self.body_marked(txn, mark).await {
                let _ = self.session.abort_transaction().await;
                match e {
                    BodyError::Driver(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                        aborts += 1;
                        continue 'attempt;
                    }
                    BodyError::Driver(e) => return Err(describe(&e)),
                    BodyError::Missing(what) => {
                        return Err(format!("Mangrove: {what} not found; was the data loaded?"));
                    }
                }
            }
            let mut unknown = 0;
            let commit_started = Instant::now();
            loop {
                match self.session.commit_transaction().await {
                    Ok(()) => {
                        let outcome = OpOutcome {
                            committed: true,
                            aborts,
                        };
                        return Ok((outcome, commit_started));
                    }
                    Err(e)
                        if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && unknown < 3 =>
                    {
                        unknown += 1;
                    }
                    Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                        aborts += 1;
                        continue 'attempt;
                    }
                    Err(e) => return Err(describe(&e)),
                }
            }
        }
        Err(format!(
            "Mangrove: gave up after {MAX_ATTEMPTS} aborted attempts of one transaction"
        ))
    }
}

impl Worker for MongoWorker {
    async fn op(&mut self, workload: Workload) -> Result<OpOutcome, String> {
        match Op::draw(workload, &mut self.rng, &self.shared) {
            Op::Txn(txn) => self.transaction(&txn).await,
            Op::PointRead(id) => match self.accounts.find_one(doc! { "_id": id }).await {
                Ok(Some(_)) => Ok(OpOutcome {
                    committed: false,
                    aborts: 0,
                }),
                Ok(None) => Err(format!("Mangrove: account {id} not found")),
                Err(e) => Err(describe(&e)),
            },
            Op::Insert(id) => {
                self.inserts
                    .insert_one(doc! { "_id": id, "n": id, "pad": PAD })
                    .await
                    .map_err(|e| describe(&e))?;
                Ok(OpOutcome {
                    committed: true,
                    aborts: 0,
                })
            }
        }
    }
}
