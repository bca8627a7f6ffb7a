use oauth_refresh_proxy::store::{file::FileStore, Store, StoredAccount};
use oauth_refresh_proxy::{Provider, Secret};

#[tokio::test(flavor = "multi_thread")]
async fn experiment() {
    let dir = std::path::PathBuf::from("/tmp/exp");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("t.db");
    {
        let s = FileStore::open(&p).unwrap();
        for i in 0..20 {
            s.save(StoredAccount::new(Provider::GitHub, &format!("a{i}"), Secret::new(format!("tok{i}")))).await.unwrap();
        }
        println!("ready {}", s.ready().await);
    }
    let good = std::fs::read(&p).unwrap();
    println!("len {}", good.len());
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut rng = 12345u64;
    let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
    for trial in 0..600 {
        let mut bytes = good.clone();
        match trial % 4 {
            3 => { for _ in 0..8 { let at = (next() as usize) % 4096; bytes[at] = next() as u8; } }
            0 => { let at = (next() as usize) % bytes.len(); bytes.truncate(at); }
            1 => { for _ in 0..4 { let at = (next() as usize) % bytes.len(); bytes[at] ^= 0xff; } }
            _ => { let at = (next() as usize) % bytes.len(); let n = 64.min(bytes.len()-at); for b in &mut bytes[at..at+n] { *b = next() as u8; } }
        }
        std::fs::write(&p, &bytes).unwrap();
        let r = FileStore::open(&p);
        let k = match &r { Ok(s) => format!("ok {}", s.load().await.map(|v| v.len()).unwrap_or(999)), Err(e) => e.to_string().replace(p.to_str().unwrap(), "P").chars().take(400).collect() };
        *outcomes.entry(k).or_default() += 1;
    }
    for (k, v) in outcomes { println!("{v:4} {k}"); }
}
