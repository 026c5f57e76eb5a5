//! The OpenTelemetry spans of the request path: the `tracing` target they
//! share, and how a request continues the W3C trace context its caller sent.
//!
//! Every span stsgate exports is a `tracing` span with target [`TARGET`].
//! Only the OpenTelemetry layer (`runtime::telemetry`, installed when
//! `telemetry.otlp_endpoint` is set) is interested in that target: without
//! it the spans' callsites are disabled once and for all, and creating one
//! costs a load of its cached interest. The logs never show these spans.
//!
//! Attribute values are names from bounded sets (decision, rule, outcome,
//! error label), the audience and issuers: never a token, a signature, a
//! secret or a header value.
//!
//! A leaf: imports nothing of ours.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every exported span.
pub const TARGET: &str = "stsgate::trace";

/// The W3C Trace Context headers (lower-case, as Envoy and HTTP/2 send them).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Makes `span` a child of the remote span that `traceparent` (and
/// `tracestate`) name. A no-op when the span is disabled (telemetry off), or
/// the header is absent or malformed: the span then starts a trace of its own.
/// Returns whether a parent was taken.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) -> bool {
    let Some(traceparent) = traceparent.filter(|t| !span.is_disabled() && well_formed(t)) else {
        return false;
    };
    // A list longer than W3C asks vendors to keep is dropped whole.
    let tracestate = tracestate.filter(|s| s.len() <= MAX_TRACESTATE);
    let cx = TraceContextPropagator::new().extract(&W3c { traceparent, tracestate });
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// The longest `tracestate` kept (W3C Trace Context §3.3.1.5: 512 at least).
const MAX_TRACESTATE: usize = 1024;

/// `version-traceid-spanid-flags` with the W3C widths in lower-case hex
/// (the propagator itself takes shorter fields); a later version may append
/// `-...` fields.
fn well_formed(traceparent: &str) -> bool {
    let b = traceparent.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    b.len() >= 55
        && (b.len() == 55 || (b[55] == b'-' && !traceparent.starts_with("00")))
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
}

/// The two headers, as the propagator reads them.
struct W3c<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for W3c<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}
