//! NATS in operator mode for the tests: an operator, one account and a user
//! per role, each a JWT signed with a fresh NKey, and the `.creds` files
//! (user JWT and NKey seed) clients authenticate with. It is what `nsc`
//! generates, made here so a test needs no tool beyond nats-server.
//!
//! The account enables JetStream without limits and its users may publish
//! and subscribe anywhere: the least-privilege rules live in
//! deploy/nats/otako.conf and are tested there; here the point is that both
//! binaries authenticate with a `.creds` file.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The server configuration and the roles' `.creds` files, written to disk.
pub struct Operator {
    /// The `operator`, `resolver` and `resolver_preload` block.
    pub config: String,
    dir: PathBuf,
    /// A user of another account the servers do not know, for the failure
    /// test.
    pub stranger: PathBuf,
}

impl Operator {
    /// Makes the keys and JWTs and writes `<role>.creds` for each of
    /// `roles` into `dir`.
    pub fn create(dir: &Path, roles: &[&str]) -> Operator {
        std::fs::create_dir_all(dir).expect("creating the creds directory");
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            "otako-test",
            json!({"type": "operator", "version": 2}),
        );
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            "OTAKO",
            json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1,
                    "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1,
                    "consumer": -1, "max_ack_pending": -1,
                    "mem_max_stream_bytes": -1, "disk_max_stream_bytes": -1,
                    "max_bytes_required": false
                },
                "default_permissions": {"pub": {}, "sub": {}}
            }),
        );
        // JetStream needs a system account for its internal subscriptions.
        let system = KeyPair::new_account();
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            "SYS",
            json!({"type": "account", "version": 2}),
        );
        for role in roles {
            write_creds(&dir.join(format!("{role}.creds")), &account, role);
        }
        // Signed by an account the operator never issued.
        let stranger = dir.join("stranger.creds");
        write_creds(&stranger, &KeyPair::new_account(), "stranger");
        let config = format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {account_jwt}\n}}\n",
            sys = system.public_key(),
            acc = account.public_key(),
        );
        Operator {
            config,
            dir: dir.to_path_buf(),
            stranger,
        }
    }

    /// The `.creds` file of `role`.
    pub fn creds(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.creds"))
    }
}

fn write_creds(path: &Path, account: &KeyPair, name: &str) {
    let user = KeyPair::new_user();
    let user_jwt = jwt(
        account,
        &user.public_key(),
        name,
        json!({
            "type": "user",
            "version": 2,
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1
        }),
    );
    let seed = user.seed().expect("a fresh key has a seed");
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    std::fs::write(path, text).expect("writing a .creds file");
}

/// A NATS JWT (`ed25519-nkey`) for `subject`, issued and signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "jti": format!("{:032X}", rand::random::<u128>()),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signing_input.as_bytes())
        .expect("signing with a fresh key");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}
