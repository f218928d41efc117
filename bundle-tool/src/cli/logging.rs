//! Log lines on stderr in GLib's shape (`rauc-Message: 04:49:18.600: text`),
//! which is what users of RAUC's command line are used to reading.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

struct GlibStyle {
    prog: String,
}

fn local_time() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!("{:02}:{:02}:{:02}.{:03}", tm.tm_hour, tm.tm_min, tm.tm_sec, now.subsec_millis())
}

impl<S, N> FormatEvent<S, N> for GlibStyle
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "CRITICAL **",
            Level::WARN => "WARNING **",
            Level::INFO => "Message",
            Level::DEBUG | Level::TRACE => "DEBUG",
        };
        write!(w, "{}-{level}: {}: ", self.prog, local_time())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(w, "{fields}: ")?;
                }
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Sends log records to stderr; `debug` adds debug records.
pub fn init(prog: &str, debug: bool) {
    let level = if debug { "debug" } else { "info" };
    // Libraries we build on log their own chatter; keep only their warnings.
    let filter = tracing_subscriber::EnvFilter::new(format!("{level},backhand=warn,hyper=warn,hyper_util=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(GlibStyle { prog: prog.to_string() })
        .try_init();
}
