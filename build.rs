// Migrations are embedded at compile time (`sqlx::migrate!`): rebuild when one changes.
fn main() {
    for dir in [
        "migrations_events",
        "migrations_projections",
        "migrations_auth",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
