//! Billing at scale (issue 14, item 4): the planner reads only the windows noted as changed and
//! loses no event committed behind its back; reconciliation records changes and one summary a
//! day; the scheduled run fans out over SQS (the real SDK, against moto), a message per batch of
//! tenants, each batch reconciled by the same handler.

use super::*;
use tenantry::billing::reconcile::{SqsReconcileQueue, handle_event};
use tenantry_tests::Moto;

/// A reconcile queue that keeps what is sent to it (for the retries, which SQS would hold back
/// for minutes; the SQS adapter itself is exercised by the dispatch above).
#[derive(Debug, Default)]
struct Recorded(std::sync::Mutex<Vec<(ReconcileInput, u32)>>);

impl Recorded {
    fn take(&self) -> Vec<(ReconcileInput, u32)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl tenantry::billing::reconcile::ReconcileQueue for Recorded {
    fn send<'a>(
        &'a self,
        batches: &'a [ReconcileInput],
        delay_secs: u32,
    ) -> tenantry::billing::reconcile::QueueFuture<'a> {
        let mut sent = self.0.lock().unwrap();
        sent.extend(batches.iter().map(|b| (b.clone(), delay_secs)));
        Box::pin(async { Ok(()) })
    }
}

/// Notes of `t`'s windows not planned yet.
async fn notes(b: &Billing, t: TenantId) -> i64 {
    b.app
        .db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM app.usage_window_changes WHERE tenant_id = $1",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_planner_reads_only_noted_windows_and_loses_no_event_committed_behind_it() {
    let b = setup(1, &[]).await;
    let t = b.tenants[0].0;
    let window_secs = b.app.app.config.billing.meter.window_secs;
    let at = minutes_ago(3);
    b.deliver(sqs(&[("m1", &[event(t, Meter::Queries, 10, at)])]))
        .await;
    b.flush().await;
    assert_eq!(notes(&b, t).await, 0, "a planned window's note is taken");

    // An ingest still open while the planner runs: the planner neither waits for it nor takes
    // its note (not visible yet), so the event is planned by the next flush.
    let mut open = tx(&b.app.app.db, t).await;
    let late = event(t, Meter::Queries, 4, at);
    tenantry::usage::ledger::record(&mut open, &[late], window_secs)
        .await
        .unwrap();
    within("a flush while an ingest is open", b.flush()).await;
    assert_eq!(
        b.delivery_states().await,
        [("queries".to_owned(), 0, 10, "delivered".to_owned())]
    );
    open.commit().await.unwrap();
    assert_eq!(notes(&b, t).await, 1, "the committed event's note is there");
    b.flush().await;
    assert_eq!(
        b.delivery_states().await,
        [
            ("queries".to_owned(), 0, 10, "delivered".to_owned()),
            ("queries".to_owned(), 1, 4, "delivered".to_owned())
        ]
    );
    b.assert_in_step().await;

    // Only noted windows are read: an event written with the trigger off (no note) is not seen
    // by any flush, until its window is noted.
    let admin = b.app.db.admin().await;
    let hidden = minutes_ago(5);
    admin
        .batch_execute("ALTER TABLE app.usage_events DISABLE TRIGGER usage_window_changes")
        .await
        .unwrap();
    admin
        .execute(
            "INSERT INTO app.usage_events \
               (tenant_id, event_id, meter, quantity, occurred_at, window_start, source) \
             VALUES ($1, $2, 'questions', 3, $3, \
                     date_bin(make_interval(secs => $4), $3, timestamptz '1970-01-01'), 'test')",
            &[
                &t.as_uuid(),
                &uuid::Uuid::now_v7(),
                &hidden,
                &(window_secs as f64),
            ],
        )
        .await
        .unwrap();
    admin
        .batch_execute("ALTER TABLE app.usage_events ENABLE TRIGGER usage_window_changes")
        .await
        .unwrap();
    b.flush().await;
    assert_eq!(
        b.delivery_states().await.len(),
        2,
        "an unnoted window is not read"
    );
    admin
        .execute(
            "INSERT INTO app.usage_window_changes (tenant_id, meter, window_start) \
             SELECT tenant_id, meter, window_start FROM app.usage_events \
             WHERE tenant_id = $1 AND meter = 'questions'",
            &[&t.as_uuid()],
        )
        .await
        .unwrap();
    b.flush().await;
    assert_eq!(b.stub.total(&b.tenants[0].1, "tenantry_questions"), 3);
    b.assert_in_step().await;
    assert_eq!(notes(&b, t).await, 0);

    // Noting a window twice (or planning it again) plans nothing more.
    admin
        .execute(
            "INSERT INTO app.usage_window_changes (tenant_id, meter, window_start) \
             SELECT tenant_id, meter, window_start FROM app.usage_events WHERE tenant_id = $1",
            &[&t.as_uuid()],
        )
        .await
        .unwrap();
    b.flush().await;
    assert_eq!(b.delivery_states().await.len(), 3);
    assert_eq!(notes(&b, t).await, 0);
}

#[tokio::test]
async fn a_tenant_without_customer_keeps_one_note_a_window_and_is_billed_once_linked() {
    let b = setup(0, &[]).await;
    let t = tenant(&b.app.app.db, "unlinked").await;
    let window_secs = b.app.app.config.billing.meter.window_secs;
    let at = minutes_ago(3);
    for q in [1, 2, 3] {
        let mut tx = tx(&b.app.app.db, t).await;
        tenantry::usage::ledger::record(&mut tx, &[event(t, Meter::Queries, q, at)], window_secs)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let admin = b.app.db.admin().await;
    admin
        .execute(
            "INSERT INTO app.usage_window_changes (tenant_id, meter, window_start) \
             VALUES ($1, 'queries', now() - interval '70 days')",
            &[&t.as_uuid()],
        )
        .await
        .unwrap();
    assert_eq!(notes(&b, t).await, 4);
    let a = &b.app.app;
    let out = flush_tenant(&a.db, a.billing.as_ref(), &a.config.billing.meter, t)
        .await
        .unwrap();
    assert!(out.no_customer);
    assert_eq!(
        notes(&b, t).await,
        1,
        "one note for the window, none past the horizon"
    );

    // Linked later: the usage it had is billed.
    let customer = b.stub.customer("cus_late");
    let mut tx = tx(&a.db, t).await;
    customers::link(&mut tx, &customer).await.unwrap();
    tx.commit().await.unwrap();
    let out = flush_tenant(&a.db, a.billing.as_ref(), &a.config.billing.meter, t)
        .await
        .unwrap();
    assert_eq!(out.delivered, 1, "{out:?}");
    assert_eq!(b.stub.total(&customer, "tenantry_queries"), 6);
    assert_eq!(notes(&b, t).await, 0);
}

/// `t`'s reconciliation records and its summaries (runs, last run, checked, repaired, issues).
async fn records(b: &Billing, t: TenantId) -> (i64, Vec<(i32, uuid::Uuid, i32, i32, usize)>) {
    let admin = b.app.db.admin().await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM app.billing_reconciliations WHERE tenant_id = $1",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    let days = admin
        .query(
            "SELECT runs, last_run_id, checked, repaired, issues \
             FROM app.billing_reconciliation_days WHERE tenant_id = $1 ORDER BY day",
            &[&t.as_uuid()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let issues: serde_json::Value = r.get(4);
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                issues.as_array().unwrap().len(),
            )
        })
        .collect();
    (n, days)
}

#[tokio::test]
async fn reconciliation_records_what_changed_and_one_summary_a_day() {
    let b = setup(1, &[]).await;
    clear_of_midnight().await;
    let (t, customer) = b.tenants[0].clone();
    let at = minutes_ago(3);
    b.deliver(sqs(&[(
        "m",
        &[
            event(t, Meter::Queries, 10, at),
            event(t, Meter::Questions, 2, at),
        ],
    )]))
    .await;
    b.flush().await;

    let first = b.reconcile().await;
    assert_eq!((first.days_checked, first.in_sync), (2, 2), "{first:?}");
    let (n1, days) = records(&b, t).await;
    assert_eq!(n1, 2, "each pair's first outcome is recorded");
    assert_eq!(days, [(1, first.run_id, 2, 0, 0)]);

    // Nothing changed: no record, the summary counts the run.
    let second = b.reconcile().await;
    let (n2, days) = records(&b, t).await;
    assert_eq!(n2, n1);
    assert_eq!(days, [(2, second.run_id, 2, 0, 0)]);

    // Drift: the repair is recorded, and then the pair's return to sync.
    b.stub
        .inject(&customer, "tenantry_queries", 5, at.timestamp());
    let third = b.reconcile().await;
    assert_eq!(third.repaired, 1, "{third:?}");
    let (n3, days) = records(&b, t).await;
    assert_eq!(n3, n2 + 1);
    assert_eq!(days, [(3, third.run_id, 2, 1, 1)]);
    let fourth = b.reconcile().await;
    assert_eq!(fourth.in_sync, 2, "{fourth:?}");
    let (n4, days) = records(&b, t).await;
    assert_eq!(n4, n3 + 1);
    assert_eq!(days, [(4, fourth.run_id, 2, 1, 0)]);
    b.assert_in_step().await;

    // What the tenant is shown is the last run's summary.
    let usage = b.usage().await;
    let last = &usage["last_reconciliation"];
    assert_eq!(last["run_id"], fourth.run_id.to_string());
    assert_eq!(last["days_checked"], 2);
    assert_eq!(last["actions"], json!({"in_sync": 2}));
    assert_eq!(last["issues"], json!([]));
}

#[tokio::test]
async fn the_schedule_fans_out_over_sqs_and_each_batch_reconciles_its_tenants() {
    let b = setup(5, &[("BILLING_RECONCILE_BATCH", "2".to_owned())]).await;
    clear_of_midnight().await;
    let at = minutes_ago(3);
    let events: Vec<UsageEvent> = b
        .tenants
        .iter()
        .enumerate()
        .map(|(i, (t, _))| event(*t, Meter::Queries, 1 + i as i64, at))
        .collect();
    b.deliver(sqs(&[("m", &events)])).await;
    b.flush().await;
    // One tenant drifted: its batch repairs it.
    b.stub
        .inject(&b.tenants[3].1, "tenantry_queries", 9, at.timestamp());

    let moto = Moto::start();
    let (client, url) = moto.queue("tenantry-reconcile").await;
    let queue = SqsReconcileQueue::new(client.clone(), &url);
    let a = &b.app.app;
    let (db, sink, cfg, plans) = (
        &a.db,
        a.billing.as_ref(),
        &a.config.billing.meter,
        &a.config.billing.plans,
    );
    let all = db.tenant_ids().await.unwrap().len();
    assert!(all >= 5);

    // The schedule's event: queued, nothing reconciled here.
    let out = handle_event(
        db,
        sink,
        cfg,
        plans,
        Some(&queue),
        json!({"mode": "reconcile"}),
    )
    .await
    .unwrap();
    assert_eq!(out["tenants"], all);
    assert_eq!(out["batches_queued"], all.div_ceil(2));
    assert_eq!(out["days_checked"], 0);
    let run_id: uuid::Uuid = serde_json::from_value(out["run_id"].clone()).unwrap();
    assert_eq!(records(&b, b.tenants[0].0).await.0, 0);

    let mut event = tenantry_tests::sqs_receive_all(&client, &url).await;
    assert_eq!(event.records.len(), all.div_ceil(2));
    let mut queued: Vec<TenantId> = Vec::new();
    for m in &event.records {
        let batch: ReconcileInput = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        assert_eq!((batch.mode, batch.run_id), (Mode::Reconcile, Some(run_id)));
        let tenants = batch.tenants.unwrap();
        assert!(tenants.len() <= 2);
        queued.extend(tenants);
    }
    queued.sort();
    queued.dedup();
    assert_eq!(queued.len(), all, "every tenant queued once");

    let batches = event.clone();
    // The queue's batches, with a malformed one and one naming no tenants: those two are
    // reported back to SQS (they would reach the dead-letter queue); the rest reconcile.
    for (id, body) in [
        ("poison-1", "not json"),
        ("poison-2", r#"{"mode": "reconcile"}"#),
    ] {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.into());
        m.body = Some(body.into());
        event.records.push(m);
    }
    let response = handle_event(
        db,
        sink,
        cfg,
        plans,
        Some(&queue),
        serde_json::to_value(&event).unwrap(),
    )
    .await
    .unwrap();
    let failed: Vec<&str> = response["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["poison-1", "poison-2"]);
    for (t, _) in &b.tenants {
        let (_, days) = records(&b, *t).await;
        assert_eq!(days.len(), 1, "{t:?}");
        assert_eq!(
            days[0].1, run_id,
            "the batch's records carry the dispatching run's id"
        );
    }
    assert_eq!(
        records(&b, b.tenants[3].0).await.1[0].3,
        1,
        "the drift was repaired"
    );
    b.assert_in_step().await;

    // SQS delivers the batches again (at least once): the same run id again, an outcome that
    // changed since (the repair has settled) — taken, nothing reported.
    let batches = serde_json::to_value(&batches).unwrap();
    let redeliver = || async {
        handle_event(db, sink, cfg, plans, Some(&queue), batches.clone())
            .await
            .unwrap()
    };
    let again = redeliver().await;
    assert_eq!(again["batchItemFailures"], json!([]), "{again}");
    assert_eq!(
        records(&b, b.tenants[3].0).await.1[0].0,
        2,
        "both deliveries counted"
    );

    // A tenant whose run fails: its message is taken, and the tenant alone is queued again
    // (after a delay), up to three attempts; then the run gives up on it (the next run tries).
    let broken = b.tenants[0].0;
    let admin = b.app.db.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.injected_fault() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN IF NEW.tenant_id = '{broken}' THEN \
                    RAISE EXCEPTION 'injected fault' USING ERRCODE = 'XX000'; END IF; \
                  RETURN NEW; END $$; \
             CREATE TRIGGER fault BEFORE INSERT ON app.billing_reconciliation_days \
               FOR EACH ROW EXECUTE FUNCTION public.injected_fault();"
        ))
        .await
        .unwrap();
    let runs_of = |t: TenantId| {
        let b = &b;
        async move { records(b, t).await.1.first().map(|d| d.0) }
    };
    let (broken_runs, other_runs) = (runs_of(broken).await, runs_of(b.tenants[1].0).await);
    let retries = Recorded::default();
    let taken = handle_event(db, sink, cfg, plans, Some(&retries), batches.clone())
        .await
        .unwrap();
    assert_eq!(taken["batchItemFailures"], json!([]), "{taken}");
    let queued = retries.take();
    assert_eq!(queued.len(), 1, "{queued:?}");
    let (retry, delay) = queued[0].clone();
    assert_eq!(delay, tenantry::billing::reconcile::RETRY_DELAY_SECS);
    assert_eq!(
        (retry.tenants.clone(), retry.run_id, retry.attempt),
        (Some(vec![broken]), Some(run_id), Some(2))
    );
    assert_eq!(runs_of(broken).await, broken_runs, "its run rolled back");
    assert_eq!(runs_of(b.tenants[1].0).await, other_runs.map(|n| n + 1));
    // The retry fails again (queued as the third attempt), then the third gives up.
    let as_event = |input: &ReconcileInput| {
        let mut m = SqsMessage::default();
        m.message_id = Some(format!("retry-{}", input.attempt.unwrap()));
        m.body = Some(serde_json::to_string(input).unwrap());
        let mut e = SqsEvent::default();
        e.records.push(m);
        serde_json::to_value(&e).unwrap()
    };
    let r = handle_event(db, sink, cfg, plans, Some(&retries), as_event(&retry))
        .await
        .unwrap();
    assert_eq!(r["batchItemFailures"], json!([]));
    let third = retries.take();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].0.attempt, Some(3));
    let r = handle_event(db, sink, cfg, plans, Some(&retries), as_event(&third[0].0))
        .await
        .unwrap();
    assert_eq!(r["batchItemFailures"], json!([]));
    assert!(retries.take().is_empty(), "the third attempt is the last");
    assert_eq!(runs_of(broken).await, broken_runs, "and it failed too");
    // The alert the template's metric filter counts is the one the handler logs.
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
    )
    .unwrap();
    assert!(template.contains(&format!(
        "$.fields.message = \"{}\"",
        tenantry::billing::reconcile::GAVE_UP_ALERT
    )));
    // With nowhere to queue it again, the message itself fails (SQS delivers it again).
    let r = handle_event(db, sink, cfg, plans, None, as_event(&retry))
        .await
        .unwrap();
    assert_eq!(
        r["batchItemFailures"],
        json!([{"itemIdentifier": "retry-2"}])
    );
    admin
        .batch_execute("DROP TRIGGER fault ON app.billing_reconciliation_days")
        .await
        .unwrap();
    // The cause fixed, the retry goes through.
    let r = handle_event(db, sink, cfg, plans, Some(&retries), as_event(&retry))
        .await
        .unwrap();
    assert_eq!(r["batchItemFailures"], json!([]));
    assert!(retries.take().is_empty());
    assert_eq!(runs_of(broken).await, broken_runs.map(|n| n + 1));

    // A flush is not fanned out: it runs here, over every tenant.
    let out = handle_event(db, sink, cfg, plans, Some(&queue), json!({"mode": "flush"}))
        .await
        .unwrap();
    assert_eq!(
        (out["tenants"].as_u64(), out["batches_queued"].as_u64()),
        (Some(all as u64), Some(0))
    );
    assert!(
        handle_event(db, sink, cfg, plans, Some(&queue), json!({"mode": "all"}))
            .await
            .is_err()
    );
}
