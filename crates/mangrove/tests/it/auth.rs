//! Authentication and authorization through the Rust driver and raw commands against a real
//! server started with `--auth`: the localhost exception, SCRAM-SHA-256 and SCRAM-SHA-1,
//! wrong passwords and unknown users, built-in roles allowing and refusing commands, a dropped
//! user losing its rights at once, users surviving kill -9, malformed SASL conversations, and
//! the refusal to listen beyond loopback without `--auth`.

use std::time::Duration;

use crate::common;
use crate::common::{Server, driver_client, spawn_on_data_dir_with, start_refused};
use bson::{Binary, Document, doc, spec::BinarySubtype};
use mongodb::error::ErrorKind;
use mongodb::options::{AuthMechanism, ClientOptions, Credential};
use mongodb::{Client, Database};

fn code_of_error(e: &mongodb::error::Error) -> Option<i32> {
    match *e.kind {
        ErrorKind::Command(ref c) => Some(c.code),
        ErrorKind::Authentication { .. } => Some(18),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w)) => Some(w.code),
        ErrorKind::InsertMany(ref m) => m.write_errors.as_ref()?.first().map(|w| w.code),
        _ => None,
    }
}

async fn code_of(db: &Database, command: Document) -> i32 {
    match db.run_command(command.clone()).await {
        Ok(reply) => panic!("{command} succeeded: {reply}"),
        Err(e) => code_of_error(&e).unwrap_or_else(|| panic!("{command}: {e}")),
    }
}

async fn user_client(port: u16, user: &str, pwd: &str, source: &str, m: AuthMechanism) -> Client {
    let mut options = ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/"))
        .await
        .unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(2));
    options.retry_writes = Some(false);
    options.credential = Some(
        Credential::builder()
            .username(user.to_string())
            .password(pwd.to_string())
            .source(source.to_string())
            .mechanism(m)
            .build(),
    );
    Client::with_options(options).unwrap()
}

/// A server started with `--auth`, its first user `root` (password "pw") made through the
/// localhost exception, and a client authenticated as it.
async fn server_with_root() -> (Server, Client) {
    let server = Server::start_with(&["--replset", "rs0", "--auth"]);
    let anon = driver_client(server.port).await;
    anon.database("admin")
        .run_command(doc! {"createUser": "root", "pwd": "pw", "roles": ["root"]})
        .await
        .unwrap();
    let root = user_client(
        server.port,
        "root",
        "pw",
        "admin",
        AuthMechanism::ScramSha256,
    )
    .await;
    (server, root)
}

fn sasl_payload(text: &str) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: text.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_scram() {
    let server = Server::start_with(&["--replset", "rs0", "--auth"]);
    let anon = driver_client(server.port).await;
    let admin = anon.database("admin");
    assert_eq!(code_of(&anon.database("t"), doc! {"find": "c"}).await, 13);
    // The handshake and ping stay open.
    admin.run_command(doc! {"ping": 1}).await.unwrap();
    // The localhost exception: the first user, then nothing more.
    admin
        .run_command(doc! {"createUser": "root", "pwd": "s3cret", "roles": ["root"]})
        .await
        .unwrap();
    let second = doc! {"createUser": "x", "pwd": "y", "roles": []};
    assert_eq!(code_of(&admin, second).await, 13);

    for m in [AuthMechanism::ScramSha256, AuthMechanism::ScramSha1] {
        let root = user_client(server.port, "root", "s3cret", "admin", m.clone()).await;
        root.database("t")
            .collection::<Document>("c")
            .insert_one(doc! {"by": format!("{m:?}")})
            .await
            .unwrap();
    }
    let wrong = user_client(
        server.port,
        "root",
        "nope",
        "admin",
        AuthMechanism::ScramSha256,
    )
    .await;
    let e = wrong
        .database("t")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap_err();
    assert_eq!(code_of_error(&e), Some(18), "{e}");
    let nobody = user_client(
        server.port,
        "ghost",
        "x",
        "admin",
        AuthMechanism::ScramSha256,
    )
    .await;
    let e = nobody
        .database("t")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap_err();
    assert_eq!(code_of_error(&e), Some(18), "{e}");

    let root = user_client(
        server.port,
        "root",
        "s3cret",
        "admin",
        AuthMechanism::ScramSha256,
    )
    .await;
    let app = root.database("app");
    for (user, role) in [
        ("reader", "read"),
        ("writer", "readWrite"),
        ("owner", "dbOwner"),
    ] {
        app.run_command(doc! {"createUser": user, "pwd": "pw", "roles": [role]})
            .await
            .unwrap();
    }
    let dup = doc! {"createUser": "reader", "pwd": "pw", "roles": []};
    assert_eq!(code_of(&app, dup).await, 51003);
    let no_role = doc! {"createUser": "z", "pwd": "pw", "roles": ["superuser"]};
    assert_eq!(code_of(&app, no_role).await, 31);
    let admin_role_here = doc! {"createUser": "z", "pwd": "pw", "roles": ["root"]};
    assert_eq!(code_of(&app, admin_role_here).await, 31);
    root.database("admin")
        .run_command(doc! {"createUser": "monitor", "pwd": "pw", "roles": ["clusterMonitor"]})
        .await
        .unwrap();

    role_matrix(server.port).await;

    // A dropped user's open connections lose their rights at once.
    let writer = user_client(
        server.port,
        "writer",
        "pw",
        "app",
        AuthMechanism::ScramSha256,
    )
    .await;
    let c = writer.database("app").collection::<Document>("c");
    c.insert_one(doc! {"a": 1}).await.unwrap();
    app.run_command(doc! {"dropUser": "writer"}).await.unwrap();
    let e = c.insert_one(doc! {"a": 2}).await.unwrap_err();
    assert_eq!(code_of_error(&e), Some(13), "{e}");
    assert_eq!(code_of(&app, doc! {"dropUser": "writer"}).await, 11);

    // Roles granted and revoked take effect on open connections too.
    let reader = user_client(
        server.port,
        "reader",
        "pw",
        "app",
        AuthMechanism::ScramSha256,
    )
    .await;
    let rc = reader.database("app").collection::<Document>("c");
    assert_eq!(
        code_of_error(&rc.insert_one(doc! {}).await.unwrap_err()),
        Some(13)
    );
    app.run_command(doc! {"grantRolesToUser": "reader", "roles": ["readWrite"]})
        .await
        .unwrap();
    rc.insert_one(doc! {"granted": true}).await.unwrap();
    app.run_command(doc! {"revokeRolesFromUser": "reader", "roles": ["readWrite"]})
        .await
        .unwrap();
    assert_eq!(
        code_of_error(&rc.insert_one(doc! {}).await.unwrap_err()),
        Some(13)
    );
    let info = app.run_command(doc! {"usersInfo": "reader"}).await.unwrap();
    let users = info.get_array("users").unwrap();
    assert_eq!(users.len(), 1, "{info}");
    assert!(
        !users[0].as_document().unwrap().contains_key("credentials"),
        "{info}"
    );
}

/// What each role may and may not do, as `code_of` sees it (0: allowed).
async fn role_matrix(port: u16) {
    let cases: &[(&str, &str, Document, bool)] = &[
        ("reader", "app", doc! {"find": "c"}, true),
        (
            "reader",
            "app",
            doc! {"insert": "c", "documents": [{}]},
            false,
        ),
        (
            "reader",
            "app",
            doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
            false,
        ),
        ("reader", "other", doc! {"find": "c"}, false),
        ("reader", "admin", doc! {"serverStatus": 1}, false),
        (
            "writer",
            "app",
            doc! {"insert": "c", "documents": [{}]},
            true,
        ),
        (
            "writer",
            "app",
            doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
            true,
        ),
        ("writer", "app", doc! {"dropDatabase": 1}, false),
        (
            "writer",
            "app",
            doc! {"createUser": "u", "pwd": "p", "roles": []},
            false,
        ),
        (
            "owner",
            "app",
            doc! {"createUser": "u2", "pwd": "p", "roles": ["read"]},
            true,
        ),
        ("owner", "other", doc! {"find": "c"}, false),
        ("monitor", "admin", doc! {"serverStatus": 1}, true),
        (
            "monitor",
            "admin",
            doc! {"setParameter": 1, "ttlMonitorSleepSecs": 30},
            false,
        ),
        ("monitor", "app", doc! {"find": "c"}, false),
    ];
    for (user, db, command, allowed) in cases {
        let source = if *user == "monitor" { "admin" } else { "app" };
        let client = user_client(port, user, "pw", source, AuthMechanism::ScramSha256).await;
        let result = client.database(db).run_command(command.clone()).await;
        match (result, allowed) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                assert_eq!(code_of_error(&e), Some(13), "{user} {db} {command}: {e}")
            }
            (Ok(r), false) => panic!("{user} on {db} ran {command}: {r}"),
            (Err(e), true) => panic!("{user} on {db} could not run {command}: {e}"),
        }
    }
}

/// Broken conversations: clear errors, and other connections unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sasl() {
    let server = Server::start_with(&["--replset", "rs0", "--auth"]);
    let anon = driver_client(server.port).await;
    let admin = anon.database("admin");
    admin
        .run_command(doc! {"createUser": "u", "pwd": "p", "roles": ["root"]})
        .await
        .unwrap();
    let start =
        |payload: Binary| doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": payload};
    assert_eq!(code_of(&admin, start(sasl_payload("garbage"))).await, 18);
    assert_eq!(
        code_of(&admin, start(sasl_payload(&"n".repeat(100_000)))).await,
        18
    );
    let plain = doc! {"saslStart": 1, "mechanism": "PLAIN", "payload": sasl_payload("x")};
    assert_eq!(code_of(&admin, plain).await, 334);
    let no_start = doc! {"saslContinue": 1, "conversationId": 1, "payload": sasl_payload("c=biws")};
    assert_eq!(code_of(&admin, no_start).await, 17);

    // A real first step, then a forged last one (a nonce that is not the server's).
    let mut conn = user_client(server.port, "u", "p", "admin", AuthMechanism::ScramSha256)
        .await
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await;
    assert!(conn.is_ok(), "{conn:?}");
    let first = doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
    "payload": sasl_payload("n,,n=u,r=clientnonce1234567890")};
    // One driver connection per command here: start and continue on one pinned session is
    // what a driver does; the pool may give another connection, which has no conversation.
    let reply = admin.run_command(first).await.unwrap();
    assert_eq!(reply.get_i32("conversationId").unwrap(), 1);
    let server_first =
        String::from_utf8(reply.get_binary_generic("payload").unwrap().clone()).unwrap();
    assert!(
        server_first.starts_with("r=clientnonce1234567890"),
        "{server_first}"
    );
    let forged = doc! {"saslContinue": 1, "conversationId": 1,
    "payload": sasl_payload("c=biws,r=clientnonce1234567890forged,p=AAAA")};
    let code = code_of(&admin, forged).await;
    assert!(code == 18 || code == 17, "forged proof: {code}");
    conn = admin.run_command(doc! {"ping": 1}).await;
    assert!(conn.is_ok(), "{conn:?}");
}

/// Users are stored through the log: they survive kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_survive_kill_9() {
    let dir = std::env::temp_dir().join(format!("mangrove-auth-{}", std::process::id()));
    let data = dir.join("data");
    let (mut child, port) = spawn_on_data_dir_with(&data, None, &["--auth"]);
    let anon = driver_client(port).await;
    anon.database("admin")
        .run_command(doc! {"createUser": "root", "pwd": "pw", "roles": ["root"]})
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, port) = spawn_on_data_dir_with(&data, None, &["--auth"]);
    let root = user_client(port, "root", "pw", "admin", AuthMechanism::ScramSha256).await;
    root.database("t")
        .collection::<Document>("c")
        .insert_one(doc! {"after": "restart"})
        .await
        .unwrap();
    // The localhost exception is over: users exist.
    let anon = driver_client(port).await;
    let again = doc! {"createUser": "x", "pwd": "y", "roles": []};
    assert_eq!(code_of(&anon.database("admin"), again).await, 13);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_to_listen_beyond_loopback_without_auth() {
    let dir = std::env::temp_dir().join(format!("mangrove-auth-bind-{}", std::process::id()));
    let (status, stderr) = start_refused(&dir.join("data"), &["--bind", "0.0.0.0"]);
    assert!(!status.success());
    assert!(stderr.contains("--auth"), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sessions belong to the user who made them: another user can neither kill nor list them; a
/// user with `killAnySession` can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_their_user() {
    let (server, root) = server_with_root().await;
    for user in ["alice", "bob"] {
        root.database("admin")
            .run_command(doc! {"createUser": user, "pwd": "pw", "roles": ["readWriteAnyDatabase"]})
            .await
            .unwrap();
    }
    let alice = user_client(
        server.port,
        "alice",
        "pw",
        "admin",
        AuthMechanism::ScramSha256,
    )
    .await;
    let bob = user_client(
        server.port,
        "bob",
        "pw",
        "admin",
        AuthMechanism::ScramSha256,
    )
    .await;
    let coll = alice.database("t").collection::<Document>("c");
    let mut session = alice.start_session().await.unwrap();
    let lsid = session.id().clone();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"by": "alice"})
        .session(&mut session)
        .await
        .unwrap();

    // Bob's killSessions names Alice's lsid, but his own session of that id: hers lives on.
    bob.database("admin")
        .run_command(doc! {"killSessions": [lsid.clone()]})
        .await
        .unwrap();
    let listed = bob
        .database("admin")
        .run_command(doc! {"aggregate": 1, "pipeline": [{"$listLocalSessions": {"allUsers": true}}], "cursor": {}})
        .await
        .unwrap();
    let batch = listed
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let id = lsid.get("id").unwrap().clone();
    assert!(
        batch.iter().all(|s| s
            .as_document()
            .unwrap()
            .get_document("_id")
            .unwrap()
            .get("id")
            != Some(&id)),
        "bob sees alice's session: {listed}"
    );
    session.commit_transaction().await.unwrap();
    assert_eq!(coll.count_documents(doc! {"by": "alice"}).await.unwrap(), 1);

    // Root, who may kill any session, kills hers by pattern: her next transaction's commit fails.
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"by": "alice", "n": 2})
        .session(&mut session)
        .await
        .unwrap();
    root.database("admin")
        .run_command(doc! {"killAllSessionsByPattern": [{"lsid": lsid}]})
        .await
        .unwrap();
    let e = session.commit_transaction().await.unwrap_err();
    assert_eq!(code_of_error(&e), Some(251), "{e}");
    // Bob may not kill every session.
    assert_eq!(
        code_of(&bob.database("admin"), doc! {"killAllSessions": []}).await,
        13
    );
}

/// Every built-in role against reads, writes, index DDL, user admin, serverStatus,
/// dropDatabase, killAllSessions and shutdown: allowed means "not Unauthorized" (a command may
/// still fail for its own reasons, like a user that already exists); shutdown is only tried
/// where it must be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_role_matrix() {
    let (server, root) = server_with_root().await;
    // find insert index user status dropDb killAll shutdown
    let matrix: &[(&str, &str, [bool; 8])] = &[
        (
            "read",
            "app",
            [true, false, false, false, false, false, false, false],
        ),
        (
            "readWrite",
            "app",
            [true, true, true, false, false, false, false, false],
        ),
        (
            "dbAdmin",
            "app",
            [false, false, true, false, false, true, false, false],
        ),
        (
            "dbOwner",
            "app",
            [true, true, true, true, false, true, false, false],
        ),
        (
            "userAdmin",
            "app",
            [false, false, false, true, false, false, false, false],
        ),
        (
            "clusterMonitor",
            "admin",
            [false, false, false, false, true, false, false, false],
        ),
        (
            "clusterManager",
            "admin",
            [false, false, false, false, false, false, false, false],
        ),
        (
            "clusterAdmin",
            "admin",
            [false, false, false, false, true, true, true, true],
        ),
        (
            "hostManager",
            "admin",
            [false, false, false, false, false, false, true, true],
        ),
        (
            "backup",
            "admin",
            [true, false, false, false, true, false, false, false],
        ),
        (
            "restore",
            "admin",
            [false, true, true, true, false, false, false, false],
        ),
        (
            "readAnyDatabase",
            "admin",
            [true, false, false, false, false, false, false, false],
        ),
        (
            "readWriteAnyDatabase",
            "admin",
            [true, true, true, false, false, false, false, false],
        ),
        (
            "userAdminAnyDatabase",
            "admin",
            [false, false, false, true, false, false, false, false],
        ),
        (
            "dbAdminAnyDatabase",
            "admin",
            [false, false, true, false, false, true, false, false],
        ),
        (
            "root",
            "admin",
            [true, true, true, true, true, true, true, true],
        ),
    ];
    for (role, db, expected) in matrix {
        let user = format!("u_{role}");
        root.database(db)
            .run_command(
                doc! {"createUser": &user, "pwd": "pw", "roles": [{"role": *role, "db": *db}]},
            )
            .await
            .unwrap();
        let client = user_client(server.port, &user, "pw", db, AuthMechanism::ScramSha256).await;
        let app = client.database("app");
        let admin = client.database("admin");
        let tries = [
            app.run_command(doc! {"find": "c"}).await,
            app.run_command(doc! {"insert": "c", "documents": [{"by": *role}]})
                .await,
            app.run_command(
                doc! {"createIndexes": "c", "indexes": [{"key": {"k": 1}, "name": "k_1"}]},
            )
            .await,
            app.run_command(
                doc! {"createUser": format!("made_by_{role}"), "pwd": "pw", "roles": []},
            )
            .await,
            admin.run_command(doc! {"serverStatus": 1}).await,
            app.run_command(doc! {"dropDatabase": 1}).await,
            admin.run_command(doc! {"killAllSessions": []}).await,
        ];
        for (i, result) in tries.iter().enumerate() {
            let allowed = !matches!(result, Err(e) if code_of_error(e) == Some(13));
            assert_eq!(allowed, expected[i], "{role}: command #{i}: {result:?}");
        }
        if !expected[7] {
            let e = admin.run_command(doc! {"shutdown": 1}).await.unwrap_err();
            assert_eq!(code_of_error(&e), Some(13), "{role}: shutdown: {e}");
        }
    }
    // Root shuts the server down cleanly, by itself.
    let _ = root
        .database("admin")
        .run_command(doc! {"shutdown": 1})
        .await;
    let mut server = server;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.alive() {
        assert!(
            std::time::Instant::now() < deadline,
            "shutdown did not stop the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = server.stop_with("TERM");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// User-defined roles: collection-level privileges, inherited roles, changes taking effect on
/// open connections, cycles and bad definitions refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_defined_roles() {
    let (server, root) = server_with_root().await;
    let (app, admin) = (root.database("app"), root.database("admin"));
    app.run_command(
        doc! {"createRole": "ordersReader", "roles": [], "privileges": [
            {"resource": {"db": "app", "collection": "orders"}, "actions": ["find"]},
        ]},
    )
    .await
    .unwrap();
    admin
        .run_command(
            doc! {"createRole": "auditor", "roles": [{"role": "ordersReader", "db": "app"}],
            "privileges": [{"resource": {"cluster": true}, "actions": ["serverStatus"]}]},
        )
        .await
        .unwrap();
    admin
        .run_command(doc! {"createUser": "u", "pwd": "pw", "roles": ["auditor"]})
        .await
        .unwrap();
    let u = user_client(server.port, "u", "pw", "admin", AuthMechanism::ScramSha256).await;
    let (uapp, uadmin) = (u.database("app"), u.database("admin"));
    uapp.run_command(doc! {"find": "orders"}).await.unwrap();
    uadmin.run_command(doc! {"serverStatus": 1}).await.unwrap();
    assert_eq!(code_of(&uapp, doc! {"find": "other"}).await, 13);
    let insert = doc! {"insert": "orders", "documents": [{"a": 1}]};
    assert_eq!(code_of(&uapp, insert.clone()).await, 13);
    app.run_command(
        doc! {"grantPrivilegesToRole": "ordersReader", "privileges": [
            {"resource": {"db": "app", "collection": "orders"}, "actions": ["insert"]},
        ]},
    )
    .await
    .unwrap();
    uapp.run_command(insert.clone()).await.unwrap();
    let info = app
        .run_command(doc! {"rolesInfo": "ordersReader", "showPrivileges": true})
        .await
        .unwrap();
    let role = info.get_array("roles").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert!(!role.get_bool("isBuiltin").unwrap(), "{info}");
    let actions = role.get_array("privileges").unwrap()[0]
        .as_document()
        .unwrap()
        .get_array("actions")
        .unwrap()
        .clone();
    assert_eq!(
        actions,
        vec![bson::Bson::from("find"), bson::Bson::from("insert")]
    );
    // A cycle, a built-in name, a duplicate, an unknown action, a missing role.
    let cycle =
        doc! {"grantRolesToRole": "ordersReader", "roles": [{"role": "auditor", "db": "admin"}]};
    assert_eq!(code_of(&app, cycle).await, 17166);
    assert_eq!(
        code_of(
            &app,
            doc! {"createRole": "read", "roles": [], "privileges": []}
        )
        .await,
        2
    );
    let dup = doc! {"createRole": "ordersReader", "roles": [], "privileges": []};
    assert_eq!(code_of(&app, dup).await, 51002);
    let bad_action = doc! {"createRole": "x", "roles": [], "privileges": [
    {"resource": {"db": "app", "collection": ""}, "actions": ["fly"]}]};
    assert_eq!(code_of(&app, bad_action).await, 2);
    let elsewhere = doc! {"createRole": "y", "roles": [], "privileges": [
    {"resource": {"db": "other", "collection": ""}, "actions": ["find"]}]};
    assert_eq!(code_of(&app, elsewhere).await, 2);
    assert_eq!(code_of(&app, doc! {"dropRole": "nope"}).await, 31);
    // Revoking the inherited role takes the rights away from the open connection.
    admin
        .run_command(doc! {"revokeRolesFromRole": "auditor", "roles": [{"role": "ordersReader", "db": "app"}]})
        .await
        .unwrap();
    assert_eq!(code_of(&uapp, doc! {"find": "orders"}).await, 13);
    uadmin.run_command(doc! {"serverStatus": 1}).await.unwrap();
    app.run_command(doc! {"dropRole": "ordersReader"})
        .await
        .unwrap();
}

/// One connection's conversation, over a raw socket: a wrong conversation id and a replayed
/// final message are refused, and a correct conversation still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_ids_and_replays() {
    let server = Server::start_with(&["--replset", "rs0", "--auth"]);
    let anon = driver_client(server.port).await;
    anon.database("admin")
        .run_command(doc! {"createUser": "u", "pwd": "p", "roles": ["root"]})
        .await
        .unwrap();
    let mut s = server.connect();
    let start = doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
    "payload": sasl_payload("n,,n=u,r=abcdefghijklmnop"), "$db": "admin"};
    let (_, reply) = common::round_trip(&mut s, &common::op_msg(1, &start));
    assert_eq!(reply.get_i32("conversationId").unwrap(), 1, "{reply}");
    let wrong_id = doc! {"saslContinue": 1, "conversationId": 7,
    "payload": sasl_payload("c=biws,r=x,p=AAAA"), "$db": "admin"};
    let (_, reply) = common::round_trip(&mut s, &common::op_msg(2, &wrong_id));
    assert_eq!(reply.get_i32("code").unwrap(), 17, "{reply}");
    // The conversation ended with the error: a replay of any final message finds none.
    let replay = doc! {"saslContinue": 1, "conversationId": 1,
    "payload": sasl_payload("c=biws,r=x,p=AAAA"), "$db": "admin"};
    let (_, reply) = common::round_trip(&mut s, &common::op_msg(3, &replay));
    assert_eq!(reply.get_i32("code").unwrap(), 17, "{reply}");
    let (_, reply) = common::round_trip(&mut s, &common::ping_msg(4));
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
}
