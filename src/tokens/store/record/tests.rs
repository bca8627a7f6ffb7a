//! Unit tests of the record codec: round trips with and without keys, key rotation, and the
//! records that must fail (tampered, moved, wrong key) without quoting a token.

use super::*;

const K1: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const K2: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn enc(k: &str) -> Encryption {
    Encryption::new(&Secret::new(k)).unwrap()
}

fn account() -> StoredAccount {
    let mut a = StoredAccount::new(Provider::GitHub, "octo", Secret::new("ghr_refresh_SECRET"));
    a.access_token = Some(Secret::new("ghu_access_SECRET"));
    a.generation = 4;
    a
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn errors_are_recorded_by_kind_and_old_texts_are_read_back() {
    let c = Codec::new(None);
    for err in [
        RefreshError::rejected("bad_refresh_token"),
        RefreshError::transient("backend answered 503"),
        RefreshError::unconfirmed("attempt timed out after 10s"),
    ] {
        let mut a = account();
        a.last_error = Some(err.clone());
        let bytes = c.encode(&a, RecordGeneration::Included);
        let (back, _) = c
            .decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
            .unwrap();
        assert_eq!(back.last_error, Some(err));
    }
    let old = |text: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&c.encode(&account(), RecordGeneration::Included)).unwrap();
        v["last_error"] = text.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        c.decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
            .unwrap()
            .0
            .last_error
    };
    assert_eq!(
        old("refresh token rejected: gone"),
        Some(RefreshError::rejected("gone"))
    );
    assert_eq!(
        old("refresh temporarily unavailable: 503"),
        Some(RefreshError::transient("503"))
    );
    assert_eq!(old("odd"), Some(RefreshError::transient("odd")));
}

#[test]
fn clear_records_round_trip() {
    let c = Codec::new(None);
    let bytes = c.encode(&account(), RecordGeneration::Included);
    let (back, s) = c
        .decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
        .unwrap();
    assert_eq!(back, account());
    assert_eq!(s, Sealing::Clear);
    let (beside, _) = c
        .decode(
            (Provider::GitHub, "octo"),
            &c.encode(&account(), RecordGeneration::Omitted),
            Generation::Beside(9),
        )
        .unwrap();
    assert_eq!(beside.generation, 9);
}

#[test]
fn sealed_records_hold_no_token_bytes_and_round_trip() {
    let c = Codec::new(Some(enc(K1)));
    let bytes = c.encode(&account(), RecordGeneration::Included);
    assert!(!contains(&bytes, "SECRET"));
    assert!(!contains(&bytes, "ghr_"));
    assert!(contains(&bytes, enc(K1).key_id()));
    let (back, s) = c
        .decode((Provider::GitHub, "octo"), &bytes, Generation::InRecord)
        .unwrap();
    assert_eq!(back, account());
    assert_eq!(s, Sealing::Current);
    // A fresh nonce per write.
    assert_ne!(bytes, c.encode(&account(), RecordGeneration::Included));
}

#[test]
fn wrong_missing_and_previous_keys() {
    let sealed = Codec::new(Some(enc(K1))).encode(&account(), RecordGeneration::Included);
    let clear = Codec::new(None).encode(&account(), RecordGeneration::Included);
    let at = (Provider::GitHub, "octo");
    let g = Generation::InRecord;
    let err = |c: &Codec, b: &[u8]| c.decode(at, b, g).unwrap_err();
    assert!(
        matches!(err(&Codec::new(None), &sealed), RecordError::Sealing(m) if m.contains("no store.encryption_key"))
    );
    assert!(
        matches!(err(&Codec::new(Some(enc(K2))), &sealed), RecordError::Sealing(m) if m.contains("neither"))
    );
    assert!(
        matches!(err(&Codec::new(Some(enc(K2))), &clear), RecordError::Sealing(m) if m.contains("encrypt_existing"))
    );
    let rotated = Codec::new(Some(enc(K2).previous_key(&Secret::new(K1)).unwrap()));
    assert_eq!(rotated.decode(at, &sealed, g).unwrap().1, Sealing::Previous);
    let existing = Codec::new(Some(enc(K2).encrypt_existing(true)));
    assert_eq!(existing.decode(at, &clear, g).unwrap().1, Sealing::Clear);
}

#[test]
fn tampered_or_moved_records_fail() {
    let c = Codec::new(Some(enc(K1)));
    let bytes = c.encode(&account(), RecordGeneration::Included);
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    // Moved: the record claims the other account too, so only the seal can tell.
    v["account"] = "mallory".into();
    let moved = serde_json::to_vec(&v).unwrap();
    let e = c
        .decode((Provider::GitHub, "mallory"), &moved, Generation::InRecord)
        .unwrap_err();
    assert!(
        matches!(e, RecordError::Sealing(ref m) if m.contains("authentication")),
        "{e}"
    );
    // Stored under another key, unedited: a sealing error too (a start-up error in Redis,
    // which skips malformed records).
    let e = c
        .decode((Provider::GitHub, "mallory"), &bytes, Generation::InRecord)
        .unwrap_err();
    assert!(
        matches!(e, RecordError::Sealing(ref m) if m.contains("another account")),
        "{e}"
    );
    // In the clear, the same mismatch stays a malformed record.
    let clear = Codec::new(None).encode(&account(), RecordGeneration::Included);
    let e = Codec::new(None)
        .decode((Provider::GitHub, "mallory"), &clear, Generation::InRecord)
        .unwrap_err();
    assert!(matches!(e, RecordError::Malformed(_)));
    // Tokens swapped between fields.
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let r = v["refresh_token"].clone();
    v["refresh_token"] = v["access_token"].clone();
    v["access_token"] = r;
    let swapped = serde_json::to_vec(&v).unwrap();
    assert!(c
        .decode((Provider::GitHub, "octo"), &swapped, Generation::InRecord)
        .is_err());
    // One flipped character.
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut t = v["refresh_token"].as_str().unwrap().to_string();
    let last = if t.starts_with('A') { "B" } else { "A" };
    t.replace_range(0..1, last);
    v["refresh_token"] = t.into();
    let flipped = serde_json::to_vec(&v).unwrap();
    assert!(c
        .decode((Provider::GitHub, "octo"), &flipped, Generation::InRecord)
        .is_err());
}

#[test]
fn errors_never_quote_the_record() {
    let c = Codec::new(None);
    let e = c
        .decode(
            (Provider::GitHub, "octo"),
            br#"{"refresh_token": ghr_SECRET}"#,
            Generation::InRecord,
        )
        .unwrap_err();
    assert!(!e.to_string().contains("SECRET"), "{e}");
}

#[test]
fn keys_must_be_32_bytes_of_base64() {
    assert!(Encryption::new(&Secret::new("!!!")).is_err());
    assert!(Encryption::new(&Secret::new("AAAA")).is_err());
    // URL-safe alphabet without padding is accepted too, and names the same key.
    let url = K1.replace('+', "-").replace('/', "_");
    let url = url.trim_end_matches('=');
    assert_eq!(enc(url).key_id(), enc(K1).key_id());
    assert!(!format!("{:?}", enc(K1)).contains(K1));
}
