//! all-MiniLM-L6-v2 in-process (`rag::minilm`): the model as installed by `scripts/models minilm`
//! gives the vectors an independent implementation gives, padding and batching change no vector,
//! a bad model directory stops the app at start, and retrieval through the app finds by meaning
//! on the 384-dimension HNSW index.

use std::path::PathBuf;

use serde_json::json;
use tenantry::config::Config;
use tenantry::db::{Access, TxSettings};
use tenantry::rag::answer::{Answerer, LocalAnswerer, NO_ANSWER, Source};
use tenantry::rag::embed::{Embedder, to_pgvector};
use tenantry::rag::minilm::MiniLmEmbedder;
use tenantry::rag::search::{SearchRequest, embed_question, search};
use tenantry_tests::{TestApp, as_tenant};
use tokio_postgres::types::Type;

/// The model directory `scripts/test` installs (`scripts/models minilm`).
fn model_dir() -> PathBuf {
    PathBuf::from(std::env::var("TENANTRY_TEST_MINILM_DIR").expect(
        "TENANTRY_TEST_MINILM_DIR: run the tests with scripts/test, which installs the model",
    ))
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

const SENTENCES: [&str; 4] = [
    "The parcel was held by customs in Lisbon.",
    "Customs officers kept the package at the Portuguese border.",
    "Quarterly revenue grew in the APAC region.",
    "A cat sits on the mat.",
];

/// The first four components of each sentence's vector and the cosines of the pairs, from
/// `tests/reference/minilm_reference.py`: the model's forward pass written out in numpy from
/// the same safetensors file (tokens from the `tokenizers` package), mean-pooled and normalized
/// as sentence-transformers does. A mistake in loading, masking, pooling or normalization moves
/// these by far more than the tolerance.
const FIRST: [[f32; 4]; 4] = [
    [-0.01636, 0.07771, 0.02484, -0.01361],
    [-0.07858, 0.09157, -0.07537, 0.0384],
    [0.01822, -0.0072, 0.00035, -0.03204],
    [0.12654, -0.03285, -0.02906, 0.04441],
];
const COSINES: [(usize, usize, f32); 6] = [
    (0, 1, 0.746),
    (0, 2, 0.0547),
    (0, 3, -0.0473),
    (1, 2, 0.0274),
    (1, 3, -0.005),
    (2, 3, -0.0731),
];

#[tokio::test]
async fn vectors_match_an_independent_implementation() {
    let model = MiniLmEmbedder::load(&model_dir()).unwrap();
    assert_eq!(model.model(), "all-MiniLM-L6-v2");
    assert_eq!(model.dims(), 384);
    let texts: Vec<String> = SENTENCES.iter().map(|s| (*s).to_owned()).collect();
    let vectors = model.embed(&texts).await.unwrap();
    assert_eq!(vectors.len(), 4);
    for (v, first) in vectors.iter().zip(FIRST) {
        assert_eq!(v.len(), 384);
        assert!((cos(v, v) - 1.0).abs() < 1e-4, "not unit length");
        for (got, want) in v.iter().zip(first) {
            assert!((got - want).abs() < 1e-3, "{:?} vs {first:?}", &v[..4]);
        }
    }
    for (a, b, want) in COSINES {
        let got = cos(&vectors[a], &vectors[b]);
        assert!(
            (got - want).abs() < 2e-3,
            "cos({a}, {b}) = {got}, want {want}"
        );
    }
}

#[tokio::test]
async fn padding_batching_and_order_change_no_vector() {
    let model = MiniLmEmbedder::load(&model_dir()).unwrap();
    // 40 texts of very different lengths (one past the 256-token limit): embedded together they
    // are sorted into batches and padded to their batch's longest; alone, none is padded.
    // About 330 tokens: past the 256 the model reads, within the 512 it could.
    let long = "The warehouse in Osaka reported a delayed pallet of sensors. ".repeat(25);
    let texts: Vec<String> = (0..40)
        .map(|i| match i {
            7 => long.clone(),
            _ => format!(
                "Order {i}: {}",
                "the courier left the box with a neighbour ".repeat(i % 9 + 1)
            ),
        })
        .collect();
    let together = model.embed(&texts).await.unwrap();
    assert_eq!(together.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        let alone = model.embed(std::slice::from_ref(text)).await.unwrap();
        let d = together[i]
            .iter()
            .zip(&alone[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "text {i}: {d}");
    }
    // Truncation at 256 tokens: what lies past them does not change the vector, what lies
    // before them does (so neither the tokenizer file's own 128 nor a longer limit is in force).
    let longer = format!("{long} Entirely different closing words about quarterly revenue.");
    let v = model.embed(&[long.clone(), longer]).await.unwrap();
    assert!(cos(&v[0], &v[1]) > 0.9999);
    let head = "The warehouse in Osaka reported a delayed pallet of sensors. ".repeat(12);
    let tail = "The invoice for the turbine was paid by bank transfer in March. ".repeat(8);
    let other = "A cat slept on the mat while the rain fell over the quiet harbour. ".repeat(8);
    let v = model
        .embed(&[format!("{head}{tail}"), format!("{head}{other}")])
        .await
        .unwrap();
    assert!(
        cos(&v[0], &v[1]) < 0.999,
        "tokens 160 to 250 were not read: {}",
        cos(&v[0], &v[1])
    );
    assert_eq!(model.embed(&[]).await.unwrap().len(), 0);
}

fn config_with(vars: &[(&str, String)]) -> Result<Config, tenantry::config::ConfigError> {
    let base = [
        (
            "APP_DATABASE_URL",
            "postgres://x:y@127.0.0.1:1/z".to_owned(),
        ),
        ("AUTH0_ISSUER", "https://tenantry.test/".to_owned()),
        ("AUTH0_AUDIENCE", "https://api.tenantry.test".to_owned()),
    ];
    Config::from_lookup(|key| {
        vars.iter()
            .chain(&base)
            .find(|(n, _)| *n == key)
            .map(|(_, v)| v.clone())
    })
}

#[tokio::test]
async fn a_directory_without_the_model_stops_the_app_at_start() {
    let empty = std::env::temp_dir().join(format!("no-model-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&empty).unwrap();
    let config = config_with(&[("EMBED_MODEL_DIR", empty.display().to_string())]).unwrap();
    let err = tenantry::App::builder(config)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("EMBED_MODEL_DIR"), "{err}");
    assert!(err.contains("config.json"), "{err}");
    // A tokenizer that is not one: named, not a panic.
    std::fs::copy(model_dir().join("config.json"), empty.join("config.json")).unwrap();
    std::fs::write(empty.join("tokenizer.json"), "{\"not\": \"a tokenizer\"}").unwrap();
    let config = config_with(&[("EMBED_MODEL_DIR", empty.display().to_string())]).unwrap();
    let err = tenantry::App::builder(config)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();

    // Two embedders named at once is a configuration error, not a silent choice.
    let err = config_with(&[
        ("EMBED_MODEL_DIR", model_dir().display().to_string()),
        (
            "BEDROCK_EMBED_MODEL_ID",
            "amazon.titan-embed-text-v2:0".to_owned(),
        ),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("EMBED_MODEL_DIR"), "{err}");
}

const NOTES: &str = r#"{"name": "notes", "columns": [{"name": "body", "type": "string"}],
  "text_columns": ["body"]}"#;

#[tokio::test]
async fn the_app_embeds_with_it_and_retrieval_finds_by_meaning_on_its_index() {
    let app = TestApp::with_vars(&[("EMBED_MODEL_DIR", model_dir().display().to_string())]).await;
    assert_eq!(app.app.embedder.model(), "all-MiniLM-L6-v2");
    let (tenant, token) = app.tenant_with_token("semantic").await;
    app.create_dataset(&token, NOTES).await;
    let notes = [
        (
            "n-1",
            "Customs officers kept the package at the Portuguese border for three days.",
        ),
        (
            "n-2",
            "Quarterly revenue grew in the APAC region after the spring campaign.",
        ),
        (
            "n-3",
            "The courier left the box with a neighbour because nobody answered the door.",
        ),
        (
            "n-4",
            "Our card was charged twice and the buyer asked for the money back.",
        ),
        (
            "n-5",
            "The new espresso machine in the office kitchen makes excellent coffee.",
        ),
        (
            "n-6",
            "Delivered to Austin; the box arrived dented and the customer wants a partial refund.",
        ),
    ];
    // Enough other notes that the approximate path finds its 20 candidates (k = 3) and does
    // not fall back to the exact scan.
    let fillers: Vec<(String, String)> = (0..30)
        .map(|i| {
            let topic = [
                "the team offsite",
                "a printer driver",
                "the garden",
                "a chess club",
            ][i % 4];
            (
                format!("f-{i}"),
                format!("Meeting note {i} about {topic} and the plans for week {i}."),
            )
        })
        .collect();
    let records: Vec<_> = notes
        .iter()
        .map(|(key, body)| (key.to_string(), body.to_string()))
        .chain(fillers)
        .map(|(key, body)| json!({"key": key, "data": {"body": body}}))
        .collect();
    app.ingest(&token, "notes", &json!(records)).await;
    let embedder = app.app.embedder.clone();
    assert_eq!(app.embed_all(tenant, embedder.as_ref()).await, 36);

    // Stored as 384-dimension vectors named after the model.
    let admin = app.db.admin().await;
    let rows = admin
        .query(
            "SELECT vector_dims(embedding), embedding_model FROM app.chunks WHERE tenant_id = $1",
            &[&tenant.as_uuid()],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 36);
    for r in &rows {
        assert_eq!(r.get::<_, Option<i32>>(0), Some(384));
        assert_eq!(
            r.get::<_, Option<String>>(1).as_deref(),
            Some("all-MiniLM-L6-v2")
        );
    }

    // Questions that share no word with the note they mean: the vector ranks that note first
    // (no full-text candidate can help), on the exact path and on the approximate one, the
    // latter on connections that price sorting out, so its candidates come from the HNSW index
    // (at 36 chunks Postgres would rather scan and sort).
    let questions = [
        ("Which shipment was detained at the frontier?", "n-1"),
        ("Did sales in Asia increase?", "n-2"),
        ("Was I billed double for a purchase?", "n-4"),
    ];
    let index_only = app.db.pool_at(
        &format!("{}?options=-c%20enable_sort%3Doff", app.db.app_url),
        2,
    );
    for (exact_max_chunks, db) in [(i64::MAX, &app.app.db), (0, &index_only)] {
        for (question, key) in questions {
            let vector = embed_question(app.app.embedder.as_ref(), question)
                .await
                .unwrap();
            let settings = TxSettings {
                hnsw_ef_search: Some(100),
                ..TxSettings::default()
            };
            let mut tx = db
                .begin_with(&as_tenant(tenant), Access::ReadOnly, settings)
                .await
                .unwrap();
            let found = search(
                &mut tx,
                &SearchRequest {
                    question,
                    vector: &vector,
                    k: 3,
                    datasets: None,
                    filter: None,
                    exact_max_chunks,
                    own_index_ef_search: None,
                    min_relevance: 0.0,
                },
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(found.exact, exact_max_chunks > 0, "{question}: path");
            let best = found
                .hits
                .iter()
                .find(|h| h.vector_rank == Some(1))
                .unwrap_or_else(|| panic!("{question}: no vector candidate"));
            assert_eq!(best.record_key, key, "{question} ({exact_max_chunks})");
            assert!(best.text_rank.is_none(), "{question}: shares a word");
        }
    }

    // The 384-dimension HNSW index (0015_minilm_index.sql) serves the approximate query shape.
    let vector = to_pgvector(
        &embed_question(app.app.embedder.as_ref(), "border")
            .await
            .unwrap(),
    );
    admin
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = admin
        .query_typed(
            "EXPLAIN (COSTS OFF) SELECT record_key FROM app.chunks \
             WHERE vector_dims(embedding) = 384 \
             ORDER BY embedding::vector(384) <=> $1::vector(384) LIMIT 3",
            &[(&vector, Type::TEXT)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("chunks_embedding_384")),
        "{plan:#?}"
    );

    // Through the edge: the answer cites the note, and says which embedder found it.
    let r = app
        .call(
            "POST",
            "/v1/ask",
            &token,
            Some(
                r#"{"question": "Which package did customs officers keep at the border?", "k": 2}"#,
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json["retrieval"]["embedder"], "all-MiniLM-L6-v2",
        "{}",
        r.json
    );
    assert_eq!(r.json["citations"][0]["record_key"], "n-1", "{}", r.json);

    // The local answerer picks the sentence to quote with the app's embedder: by meaning here,
    // where the hashed embedder's wording similarity is too low to quote anything.
    let question = "Which boxes were damaged?";
    let r = app
        .call(
            "POST",
            "/v1/ask",
            &token,
            Some(&json!({"question": question, "k": 3}).to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["kind"], "content", "{}", r.json);
    assert_eq!(r.json["citations"][0]["record_key"], "n-6", "{}", r.json);
    assert!(
        r.json["answer"].as_str().unwrap().contains("dented"),
        "{}",
        r.json
    );
    let source = [Source {
        label: "S1".into(),
        text: notes[5].1.to_owned(),
    }];
    let hashed = LocalAnswerer::default()
        .answer(question, &source)
        .await
        .unwrap();
    assert_eq!(
        hashed.text, NO_ANSWER,
        "the hashed embedder quoted: {}",
        hashed.text
    );
    let semantic = LocalAnswerer::with_embedder(embedder)
        .answer(question, &source)
        .await
        .unwrap();
    assert!(semantic.text.contains("dented"), "{}", semantic.text);
}
