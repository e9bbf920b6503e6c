//! A mail server's side of the `smtp` dialogue: the real probe talks to an in-memory peer
//! that sends the fuzz input's chunks (split at `\0\n`) one per step: the greeting at once,
//! then one after each command the probe sends (EHLO, STARTTLS, EHLO over TLS, QUIT), then
//! closes. Every reply goes through the probe's bounded reader, reply-line parsing, EHLO
//! extension reading and banner matching; after a `220` to STARTTLS the next chunk meets
//! rustls. The first byte picks the options. The clock is paused: a peer that stops talking
//! makes the probe's deadline pass at once.

#![no_main]

use estate_agent::checks::smtp::{BannerPattern, SmtpOptions, probe_smtp_over};
use estate_fuzz::{DIALOGUE_TIMEOUT, assert_reportable, chunks, paused_runtime, scripted_peer};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static BANNER_REGEX: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"(?m)^mx\d\.example\.com ESMTP").expect("a valid regex"));

fuzz_target!(|data: &[u8]| {
    let Some((&selector, script)) = data.split_first() else {
        return;
    };
    let options = SmtpOptions {
        implicit_tls: selector & 0x10 != 0,
        helo_name: Some("agent1.example.com".to_owned()),
        require_starttls: selector & 1 == 0,
        expect_banner: match (selector >> 1) & 3 {
            0 => None,
            1 => Some(BannerPattern::Contains("ESMTP".to_owned())),
            _ => Some(BannerPattern::Matches(BANNER_REGEX.clone())),
        },
        ..SmtpOptions::default()
    };
    let script = chunks(script, 8);
    let result = paused_runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(scripted_peer(server, script));
        let result =
            probe_smtp_over(client, "mx1.example.com", 25, &options, DIALOGUE_TIMEOUT).await;
        peer.abort();
        result
    });
    assert_reportable("smtp", &[result]);
});
