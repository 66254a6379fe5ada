//! Database credentials from Secrets Manager (the real SDK client, against moto).

use tenantry::secrets::{self, SecretError};
use tenantry_tests::{DEV_APP_PASSWORD, Moto, TestDb};

#[tokio::test]
async fn the_app_role_url_comes_from_an_rds_style_secret() {
    let db = TestDb::new().await;
    let moto = Moto::start();
    let sdk = moto.sdk_config().await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let cfg: tokio_postgres::Config = db.app_url.parse().unwrap();
    let secret = serde_json::json!({
        "engine": "postgres",
        "username": "tenantry_app",
        "password": DEV_APP_PASSWORD,
        "host": "db-instance.invalid",
        "port": cfg.get_ports()[0],
        "dbname": db.name,
    });
    let arn = client
        .create_secret()
        .name("tenantry/app")
        .secret_string(secret.to_string())
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();

    // The secret's host is the instance; functions go through the proxy (here: loopback).
    let url = secrets::database_url(&sdk, &arn, Some("127.0.0.1"))
        .await
        .unwrap();
    let conn = tenantry_tests::connect(&url).await;
    let who: String = conn
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "tenantry_app");

    // A missing secret is an error that names the secret, not a panic; nothing secret leaks.
    let err = secrets::database_url(
        &sdk,
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope",
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SecretError::Fetch { .. }), "{err}");
    assert!(!err.to_string().contains(DEV_APP_PASSWORD));

    // A secret in neither form is refused by name.
    let bad = client
        .create_secret()
        .name("tenantry/bad")
        .secret_string("hunter2")
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let err = secrets::database_url(&sdk, &bad, None).await.unwrap_err();
    assert!(matches!(err, SecretError::Format(_)));
    assert!(!err.to_string().contains("hunter2"));
}
