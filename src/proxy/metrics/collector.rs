//! The families read from the token cache at scrape time: `orp_refresh_total`,
//! `orp_refresh_coalesced_total`, `orp_refresh_cooldown_total`, `orp_replay_total` and the
//! `orp_tokens` gauge.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::provider::Provider;
use crate::tokens::Tokens;

/// Encodes the families read from the cache at scrape time.
#[derive(Debug)]
pub(super) struct TokensCollector {
    pub(super) tokens: Tokens,
}

impl TokensCollector {
    fn counter_family(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        samples: &[(Vec<(&'static str, &'static str)>, u64)],
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Collector for TokensCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats: Vec<_> = Provider::ALL
            .iter()
            .map(|&p| (p.as_str(), self.tokens.stats(p)))
            .collect();

        let mut refresh = Vec::new();
        let mut coalesced = Vec::new();
        let mut cooldown = Vec::new();
        let mut replay = Vec::new();
        for (p, s) in &stats {
            for (outcome, v) in [
                ("success", s.refresh_success),
                ("rejected", s.refresh_rejected),
                ("transient_error", s.refresh_transient_error),
            ] {
                refresh.push((vec![("provider", *p), ("outcome", outcome)], v));
            }
            coalesced.push((vec![("provider", *p)], s.coalesced));
            cooldown.push((vec![("provider", *p)], s.cooldown));
            for (outcome, v) in [
                ("replayed", s.replayed),
                ("not_replayable", s.not_replayable),
            ] {
                replay.push((vec![("provider", *p), ("outcome", outcome)], v));
            }
        }
        Self::counter_family(
            &mut encoder,
            "orp_refresh",
            "Finished refreshes, by provider and outcome",
            &refresh,
        )?;
        Self::counter_family(
            &mut encoder,
            "orp_refresh_coalesced",
            "Requests that waited on a refresh another request had started",
            &coalesced,
        )?;
        Self::counter_family(
            &mut encoder,
            "orp_refresh_cooldown",
            "Requests answered refresh_unavailable without a backend call: the account was in cooldown after a failed refresh, or awaiting a timed-out attempt's answer",
            &cooldown,
        )?;
        Self::counter_family(
            &mut encoder,
            "orp_replay",
            "Upstream 401s, by whether the request was replayed",
            &replay,
        )?;

        // [valid, expired, needs_reauth] per provider.
        let mut states = [[0i64; 3]; 2];
        for a in self.tokens.list() {
            let i = Provider::ALL
                .iter()
                .position(|&p| p == a.provider)
                .unwrap_or(0);
            let s = if a.needs_reauth {
                2
            } else if a.valid {
                0
            } else {
                1
            };
            states[i][s] += 1;
        }
        let mut gauge = encoder.encode_descriptor(
            "orp_tokens",
            "Accounts by provider and token state",
            None,
            MetricType::Gauge,
        )?;
        for (i, p) in Provider::ALL.iter().enumerate() {
            for (j, state) in ["valid", "expired", "needs_reauth"].iter().enumerate() {
                let labels = [("provider", p.as_str()), ("state", *state)];
                ConstGauge::new(states[i][j]).encode(gauge.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
