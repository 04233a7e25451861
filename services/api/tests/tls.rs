//! The api reaches Postgres over TLS when its URL asks for it
//! (`sslmode=require`), with the rustls build and no OpenSSL. Run against
//! the real server of `TEST_DATABASE_URL`, which has TLS on, because a
//! TLS setting that only parses proves nothing: the server itself is asked
//! whether the session is encrypted.
//!
//! Without `TEST_DATABASE_URL` the test passes after saying `SKIPPED:` on
//! stderr, like the store conformance suite.

mod support;

use std::io::Write as _;

use filament_api::store::{CoreStore as _, NewUser, PostgresStore};
use sqlx::{Connection as _, Executor as _, PgConnection};
use ulid::Ulid;

/// `url` with one more query parameter; a later `sslmode` wins over one
/// the URL already had.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// What the server says about the TLS of the session `url` opens.
async fn session_is_encrypted(url: &str) -> bool {
    let mut connection = PgConnection::connect(url).await.expect("connect");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut connection)
            .await
            .expect("pg_stat_ssl");
    connection.close().await.expect("close");
    ssl
}

#[tokio::test]
async fn the_store_works_over_tls_and_the_server_sees_an_encrypted_session() {
    let Some(url) = support::postgres_url("Postgres over TLS not checked") else {
        return;
    };
    let tls_url = with_param(&url, "sslmode=require");

    // The same query on a plain session answers false, so a true below
    // is the server's word and not a query that always says yes.
    assert!(
        !session_is_encrypted(&with_param(&url, "sslmode=disable")).await,
        "a session with sslmode=disable reported TLS"
    );
    assert!(
        session_is_encrypted(&tls_url).await,
        "a session with sslmode=require is not encrypted"
    );

    let schema = format!("tls_{}", Ulid::generate().to_string().to_lowercase());
    let store = PostgresStore::connect_in_schema(&tls_url, &schema)
        .await
        .expect("connect the store with sslmode=require");
    let user = NewUser {
        user_id: filament_ids::UserId::generate(),
        username: "tls-user".to_owned(),
        password_hash: "x".to_owned(),
        created_at_unix: 1,
    };
    let written = store.create_user(user.clone()).await;
    let read = store.user_by_id(user.user_id).await;
    store.close().await;
    drop_schema(&url, &schema).await;

    written.expect("create a user over TLS");
    let read = read.expect("read the user over TLS").expect("the user");
    assert_eq!(read.username, user.username);
}

/// `verify-full` checks the certificate against trusted roots and the host
/// name. The test server's certificate is self-signed, so a refusal shows
/// that the client verifies rather than accepting any certificate.
#[tokio::test]
async fn verify_full_refuses_a_certificate_it_cannot_trust() {
    let Some(url) = support::postgres_url("Postgres over TLS not checked") else {
        return;
    };
    let refused = PgConnection::connect(&with_param(&url, "sslmode=verify-full")).await;
    let Err(error) = refused else {
        panic!("verify-full accepted an untrusted certificate");
    };
    // Any other failure (the server down, TLS off) would prove nothing.
    // rustls' verdict reaches sqlx as an I/O error, so its text is checked.
    assert!(
        error.to_string().contains("certificate"),
        "not a certificate refusal: {error}"
    );
    eprintln!("verify-full refused the certificate: {error}");
}

/// Best effort: a leftover schema only costs space in a test database.
async fn drop_schema(url: &str, schema: &str) {
    let dropped = async {
        let mut connection = PgConnection::connect(url).await?;
        let statement = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        connection.execute(sqlx::AssertSqlSafe(statement)).await?;
        connection.close().await
    };
    if let Err(error) = dropped.await {
        let _ = writeln!(
            std::io::stderr(),
            "warning: could not drop test schema {schema}: {error}"
        );
    }
}
