//! Unit tests of the Redis store's pure parts: key names and record round trips, and the
//! refresh decision (adopt, reject, or refresh fenced on which generation).

use super::keys::{key_of, parse_account_key, KeyForm, KeyKind};
use super::refresh::{decide, Decision};
use crate::provider::Provider;
use crate::refresh::RefreshError;
use crate::token::Secret;
use crate::tokens::store::record::{Codec, Generation, RecordGeneration};
use crate::tokens::store::StoredAccount;

fn account(generation: u64, access: &str, refresh: &str) -> StoredAccount {
    let mut a = StoredAccount::new(Provider::GitHub, "octo", Secret::new(refresh));
    a.access_token = Some(Secret::new(access));
    a.generation = generation;
    a
}

#[test]
fn records_round_trip_without_debug_leaks() {
    let mut a = account(7, "ghu_1", "ghr_1");
    a.expires_at = Some(1_800_000_000);
    a.seed_fingerprint = Some("ab".into());
    a.last_error = Some(RefreshError::transient("x"));
    let codec = Codec::new(None);
    let key = key_of(KeyForm::Plain, KeyKind::Account, a.provider, &a.account);
    let under = parse_account_key(&key).unwrap();
    assert_eq!(key, "orp:acct:github:octo");
    let tagged = key_of(
        KeyForm::HashTagged,
        KeyKind::Account,
        a.provider,
        &a.account,
    );
    assert_eq!(tagged, "orp:acct:{github:octo}");
    assert_eq!(parse_account_key(&tagged), Some(under));
    assert_eq!(
        key_of(KeyForm::HashTagged, KeyKind::Lock, a.provider, "a}b"),
        "orp:lock:{github:a}b}"
    );
    assert_eq!(
        parse_account_key("orp:acct:{github:a}b}"),
        Some((Provider::GitHub, "a}b"))
    );
    let data = codec.encode(&a, RecordGeneration::Omitted);
    let (back, _) = codec.decode(under, &data, Generation::Beside(7)).unwrap();
    assert_eq!(back, a);
    assert!(codec.decode(under, b"{", Generation::Beside(1)).is_err());
    assert!(parse_account_key("orp:lock:github:octo").is_none());
    assert_eq!(
        parse_account_key("orp:acct:google:a:b"),
        Some((Provider::Google, "a:b"))
    );
}

#[test]
fn decisions() {
    let cur = account(3, "ghu_a", "ghr_a");
    // Newer generation with other tokens: adopt.
    assert!(matches!(
        decide(&cur, Some(account(4, "ghu_b", "ghr_b"))),
        Decision::Adopt(_)
    ));
    // Same generation: refresh from the stored state, fenced on it.
    assert!(matches!(
        decide(&cur, Some(account(3, "ghu_a", "ghr_a"))),
        Decision::Refresh {
            expected: Some(3),
            ..
        }
    ));
    // Renumbered only (same tokens): refresh, fenced on the stored generation.
    assert!(matches!(
        decide(&cur, Some(account(5, "ghu_a", "ghr_a"))),
        Decision::Refresh {
            expected: Some(5),
            ..
        }
    ));
    // Stored is older, or missing: refresh from the cache.
    match decide(&cur, Some(account(1, "ghu_z", "ghr_z"))) {
        Decision::Refresh { base, expected } => {
            assert_eq!((base.generation, expected), (3, Some(1)))
        }
        _ => panic!("expected a refresh"),
    }
    assert!(matches!(
        decide(&cur, None),
        Decision::Refresh { expected: None, .. }
    ));
    // Marked as needing re-authorisation: rejected without a call.
    let mut dead = account(3, "ghu_a", "ghr_a");
    dead.needs_reauth = true;
    dead.last_error = Some(RefreshError::rejected("bad_refresh_token"));
    match decide(&cur, Some(dead)) {
        Decision::Rejected(RefreshError::Rejected(r)) => assert_eq!(r, "bad_refresh_token"),
        _ => panic!("expected a rejection"),
    }
    // Newer but expired: refresh from it rather than adopt.
    let mut expired = account(4, "ghu_b", "ghr_b");
    expired.expires_at = Some(1);
    assert!(matches!(
        decide(&cur, Some(expired)),
        Decision::Refresh {
            expected: Some(4),
            ..
        }
    ));
}
