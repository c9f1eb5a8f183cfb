use crate::db;

/// The dashboard's sum of the last day's sales reads the purchases of that day through their
/// index, not every purchase ever made (100 days of them here).
#[tokio::test]
async fn the_sales_of_the_last_day_are_read_through_their_index() {
    let mut conn = db::testing::migrated_connection(db::projections_migrator()).await;
    sqlx::raw_sql(
        "INSERT INTO insight_purchases
         SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'general', 1, 5000,
                'USD', CASE WHEN i % 7 = 0 THEN 'refunded' ELSE 'confirmed' END,
                gen_random_uuid(), now() - (i % 100) * interval '1 day' - interval '1 hour'
           FROM generate_series(1, 20000) AS i;
         ANALYZE insight_purchases",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let since = chrono::Utc::now() - chrono::Duration::hours(24);
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", super::SALES_SINCE))
        .bind(since)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    db::testing::assert_probes_only(&plan, "insight_purchases_confirmed_at_idx");
}
