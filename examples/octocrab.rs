//! octocrab through the layer, against in-process fakes.
//!
//! Run it with `cargo run --example octocrab --features octocrab`: no credentials, no network.
//! It starts a fake GitHub API and a fake Flashback-compatible refresh backend on loopback,
//! maps the fake's address to GitHub on the layer (as a GitHub Enterprise Server host would
//! be), builds a real `octocrab::Octocrab` on octocrab's default stack with the layer at its
//! bottom, and prints what happened at each step. It checks its own figures (and is run by
//! `cargo test --features octocrab`).

use std::time::{Duration, SystemTime};

use oauth_refresh_proxy::demo::{self, Realm};
use oauth_refresh_proxy::{BackendRefresher, Provider, RefreshLayer, Secret, TokenSeed, Tokens};
use octocrab::Page;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(serde::Deserialize)]
struct Repo {
    full_name: String,
}

/// What the fake answers for a body it received.
#[derive(serde::Deserialize)]
struct Digest {
    sha256: String,
    len: usize,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The fakes: GitHub's API and a refresh backend that rotates refresh tokens as GitHub does.
    let realm = Realm::rotating("octocrab-example");
    let backend_url = demo::start_backend(realm.clone()).await;
    let api = demo::start_api(realm.clone(), Provider::GitHub).await;

    let refresher = BackendRefresher::new(&backend_url)?
        .bearer(Secret::new(realm.backend_token.clone().unwrap_or_default()));
    let tokens = Tokens::builder(refresher).build();
    let refresh = realm.new_refresh_token();
    let access = realm.new_access_token(&refresh);
    tokens.insert(
        Provider::GitHub,
        "octocat",
        TokenSeed::new(refresh)
            .access_token(access.as_str())
            .expires_at(SystemTime::now() + Duration::from_secs(3600)),
    );

    // The layer, with the fake's address mapped to GitHub; octocrab on top of it. Against
    // api.github.com neither the mapping nor `base_uri` is needed; against GitHub Enterprise
    // Server: `.host("ghe.example.com".parse()?, ..)` and `https://ghe.example.com/api/v3`.
    let layer = RefreshLayer::new(tokens.clone())
        .default_account("octocat")
        .host(api.to_string().parse()?, Provider::GitHub);
    let github = oauth_refresh_proxy::octocrab::builder(layer)
        .base_uri(format!("http://{api}").parse()?)
        .build()?;

    let report = |step: &str| {
        let st = tokens.stats(Provider::GitHub);
        println!(
            "{step:<52} api calls {:>2}   backend calls {}   refreshes {}   replays {}",
            realm.api_calls.get(),
            realm.backend_calls.get(),
            st.refresh_success,
            st.replayed
        );
    };

    let user: Digest = github.get("/user", None::<&()>).await?;
    check(user.len == 0, "GET /user answered")?;
    report("1. GET /user: the cached token, injected");

    let first: Page<Repo> = github.get("/user/repos", None::<&()>).await?;
    realm.revoke_access(&access);
    let repos = github.all_pages(first).await?;
    report(&format!(
        "2. all_pages, token revoked after page 1: {} repos",
        repos.len()
    ));
    check(repos.len() == 6, "6 repositories over 3 pages")?;
    check(realm.backend_calls.get() == 1, "exactly one refresh")?;
    println!("   last: {}", repos[repos.len() - 1].full_name);

    let live = realm
        .seen()
        .last()
        .and_then(|s| s.authorization.clone())
        .unwrap_or_default();
    realm.revoke_access(live.trim_start_matches("Bearer "));
    let issue = serde_json::json!({"title": "found with octocrab", "body": "🦀".repeat(100)});
    let sent = serde_json::to_string(&issue)?;
    let answer: Digest = github
        .post("/repos/octocat/hello/issues", Some(&issue))
        .await?;
    report("3. POST, token revoked: 401 -> refresh -> replay");
    check(
        answer.sha256 == demo::sha256_hex(sent.as_bytes()) && answer.len == sent.len(),
        "the replayed body is byte-identical",
    )?;
    check(tokens.stats(Provider::GitHub).replayed == 2, "two replays")?;

    let agents: Vec<String> = realm
        .seen()
        .iter()
        .filter_map(|s| s.headers.get("user-agent")?.to_str().ok().map(String::from))
        .collect();
    check(
        agents.len() == realm.seen().len() && agents.iter().all(|a| a == "octocrab"),
        "octocrab's User-Agent on every request",
    )?;
    println!("   user-agent seen by the fake: {}", agents[0]);
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs_and_its_figures_hold() {
        super::main().unwrap();
    }
}
