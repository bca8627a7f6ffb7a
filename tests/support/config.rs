//! Config text the black-box tests share: the `[refresh]` table of backend mode, and the
//! `/github` route with its seeded default account `octo`.

/// `[refresh]` in backend mode: `backend`, its bearer read from `$token_env`.
pub fn backend_refresh(backend: &str, token_env: &str) -> String {
    format!(
        r#"[refresh]
backend_url = "{backend}"
backend_token = "env:{token_env}"
"#
    )
}

/// A `/github` route to `upstream` whose default account is `octo`, and the account `octo`
/// seeded with `refresh` and `access` (expiring at `expires_at`, Unix seconds).
pub fn octo_route(upstream: &str, refresh: &str, access: &str, expires_at: u64) -> String {
    format!(
        r#"[[route]]
prefix = "/github"
upstream = "{upstream}"
provider = "github"
default_account = "octo"

[[account]]
provider = "github"
id = "octo"
refresh_token = "{refresh}"
access_token = "{access}"
expires_at = {expires_at}
"#
    )
}
