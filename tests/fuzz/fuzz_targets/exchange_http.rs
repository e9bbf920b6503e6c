//! An HTTP server's answers as the `exchange` kind reads them: the real request goes to an
//! in-memory peer that answers with the fuzz input, hyper reads the response (status,
//! `WWW-Authenticate`, `Location`, a bounded body), and the kind judges it as an Autodiscover
//! step (https: the 401/200/403/405 rule; http: a redirect joined to the URL and required to
//! be https) or as a `healthcheck.htm` page. Our code parses no Autodiscover XML: the kind
//! proves Autodiscover answers without credentials, from the status and headers. The first
//! byte picks what is asked.

#![no_main]

use estate_agent::checks::exchange::{autodiscover_step_over, health_over};
use estate_fuzz::{DIALOGUE_TIMEOUT, assert_reportable, paused_runtime, scripted_peer};
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, response)) = data.split_first() else {
        return;
    };
    let script = vec![Vec::new(), response.to_vec()];
    let result = paused_runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        // The request's head ends with a line: the peer answers after reading it.
        let peer = tokio::spawn(scripted_peer(server, script));
        let answer = async {
            match selector % 3 {
                0 => {
                    let url = Url::parse("https://contoso.test/autodiscover/autodiscover.xml")
                        .expect("a valid URL");
                    autodiscover_step_over(client, 1, &url, "contoso.test")
                        .await
                        .0
                }
                1 => {
                    let url = Url::parse(
                        "http://autodiscover.contoso.test/autodiscover/autodiscover.xml",
                    )
                    .expect("a valid URL");
                    autodiscover_step_over(client, 3, &url, "contoso.test")
                        .await
                        .0
                }
                _ => {
                    let url = Url::parse("https://mail.contoso.test/owa/healthcheck.htm")
                        .expect("a valid URL");
                    health_over(client, &url).await
                }
            }
        };
        let result = tokio::time::timeout(DIALOGUE_TIMEOUT, answer).await;
        peer.abort();
        result
    });
    match result {
        Ok(result) => assert_reportable("exchange", &[result]),
        Err(_elapsed) => panic!("the exchange kind waited past its deadline on one response"),
    }
});
