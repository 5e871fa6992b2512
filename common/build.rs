// `sqlx::migrate!` embeds ../migrations when this crate compiles; without
// this line cargo would not rebuild it when a migration is added.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
