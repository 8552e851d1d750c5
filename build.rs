//! Rebuilds when a migration is added: `sqlx::migrate!` compiles `migrations/` into the binary,
//! and cargo does not otherwise watch that folder.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
