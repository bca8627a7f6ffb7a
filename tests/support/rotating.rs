//! The fakes the durable-store tests share: a rotating realm (GitHub refreshes rotate the
//! refresh token), its refresh backend and a fake GitHub API, with the few questions those
//! tests ask of them. Test files add their own methods (`impl RotatingWorld` in the file).

use std::net::SocketAddr;
use std::sync::Arc;

use oauth_refresh_proxy::Provider;

use super::{capture_logs, start_api, start_backend, Realm};

/// A rotating realm, its backend and a fake GitHub API.
pub struct RotatingWorld {
    pub realm: Arc<Realm>,
    pub backend: String,
    pub api: SocketAddr,
}

impl RotatingWorld {
    pub async fn new(name: &str) -> RotatingWorld {
        capture_logs();
        let realm = Realm::new(name, true);
        let backend = start_backend(realm.clone()).await;
        let api = start_api(realm.clone(), Provider::GitHub).await;
        RotatingWorld {
            realm,
            backend,
            api,
        }
    }

    /// A refresh token the backend accepts and an access token the API accepts.
    pub fn credentials(&self) -> (String, String) {
        let refresh = self.realm.new_refresh_token();
        let access = self.realm.new_access_token(&refresh);
        (refresh, access)
    }

    /// The `Authorization` of the last request the API answered with 200.
    pub fn last_ok_authorization(&self) -> String {
        super::shared_store::last_ok_authorization(&self.realm)
    }
}
