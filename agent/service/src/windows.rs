//! Windows: the service control manager (SCM) through the `windows-service` crate, and logging
//! to the Windows Event Log (the `eventlog` crate) and a file under ProgramData.
//!
//! `install` creates (or updates) an own-process service running as LocalSystem, started
//! automatically with a delay after boot (so the agent does not compete with the machine's own
//! start-up after patch reboots), restarted on failure (also when it exits with an error), with
//! absolute binary and config paths, and registers the program as an Event Log source.
//! `run_service` is what the SCM starts: it reports `Running` at once and only then does the
//! heavy start-up (config, runtime, state), so a slow start never hits the SCM's 30 s limit.

use crate::{Installation, Program, Running};
use anyhow::Context as _;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// `ERROR_SERVICE_DOES_NOT_EXIST`.
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;

/// The log file is moved aside (`.old`, one generation) when it is larger than this at start.
const LOG_FILE_LIMIT: u64 = 16 * 1024 * 1024;

/// `%ProgramData%\estate`: configs, and the `logs` directory.
pub fn program_data() -> PathBuf {
    let base = std::env::var_os("ProgramData").unwrap_or_else(|| r"C:\ProgramData".into());
    PathBuf::from(base).join("estate")
}

/// `%ProgramData%\estate\logs\<name>.log`.
pub fn log_file(program: &Program) -> PathBuf {
    program_data()
        .join("logs")
        .join(format!("{}.log", program.name))
}

fn manager(access: ServiceManagerAccess) -> anyhow::Result<ServiceManager> {
    ServiceManager::local_computer(None::<&str>, access)
        .context("cannot open the service control manager (run as Administrator)")
}

/// Whether a `windows-service` error means "no such service".
fn is_missing(error: &windows_service::Error) -> bool {
    matches!(error, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST))
}

/// Creates or updates the service, its recovery actions and its Event Log source.
pub fn install(installation: &Installation) -> anyhow::Result<()> {
    let program = &installation.program;
    let info = ServiceInfo {
        name: program.name.into(),
        display_name: program.display_name.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: installation.binary.clone(),
        launch_arguments: vec![
            OsString::from("--config"),
            installation.config.clone().into_os_string(),
            OsString::from("service"),
            OsString::from("run"),
        ],
        dependencies: Vec::new(),
        account_name: None, // LocalSystem: WMI, the registry and the SCM are readable
        account_password: None,
    };
    let manager = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let access = ServiceAccess::QUERY_STATUS
        | ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::START
        | ServiceAccess::QUERY_CONFIG;
    let (service, existed) = match manager.open_service(program.name, access) {
        Ok(service) => {
            service
                .change_config(&info)
                .with_context(|| format!("cannot update the service `{}`", program.name))?;
            (service, true)
        }
        Err(error) if is_missing(&error) => (
            manager
                .create_service(&info, access)
                .with_context(|| format!("cannot create the service `{}`", program.name))?,
            false,
        ),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot open the service `{}`", program.name));
        }
    };
    service
        .set_description(program.description)
        .context("cannot set the service description")?;
    service
        .set_delayed_auto_start(true)
        .context("cannot set delayed automatic start")?;
    let restart = |seconds| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(seconds),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(10), restart(60), restart(300)]),
        })
        .context("cannot set the restart-on-failure actions")?;
    // Also restart when the program stops with an error, not only when it crashes.
    service
        .set_failure_actions_on_non_crash_failures(true)
        .context("cannot enable the failure actions for errors")?;
    eventlog::register(program.name)
        .with_context(|| format!("cannot register the Event Log source `{}`", program.name))?;
    let logs = log_file(program);
    if let Some(directory) = logs.parent() {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create `{}`", directory.display()))?;
    }
    println!(
        "{} service `{}` (automatic, delayed start; restarts on failure)",
        if existed { "updated" } else { "installed" },
        program.name
    );
    println!("  runs:   {}", installation.binary.display());
    println!("  config: {}", installation.config.display());
    println!(
        "  logs:   Event Log (Application, source {}) and {}",
        program.name,
        logs.display()
    );
    println!("start it now with: {} service start", program.name);
    Ok(())
}

/// Stops the service if it runs, deletes it and its Event Log source.
pub fn uninstall(program: &Program) -> anyhow::Result<()> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
    let service = match manager.open_service(program.name, access) {
        Ok(service) => service,
        Err(error) if is_missing(&error) => {
            anyhow::bail!("the service `{}` is not installed", program.name)
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot open the service `{}`", program.name));
        }
    };
    if service.query_status()?.current_state != ServiceState::Stopped {
        stop_and_wait(&service, program)?;
    }
    service
        .delete()
        .with_context(|| format!("cannot delete the service `{}`", program.name))?;
    if let Err(error) = eventlog::deregister(program.name) {
        println!("(the Event Log source `{}` stays: {error})", program.name);
    }
    println!("removed the service `{}`", program.name);
    Ok(())
}

fn open(
    program: &Program,
    access: ServiceAccess,
) -> anyhow::Result<windows_service::service::Service> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    manager.open_service(program.name, access).map_err(|error| {
        if is_missing(&error) {
            anyhow::anyhow!(
                "the service `{}` is not installed (install it with `{} service install --config PATH`)",
                program.name,
                program.name
            )
        } else {
            anyhow::Error::new(error).context(format!("cannot open the service `{}`", program.name))
        }
    })
}

/// Starts the service and waits until the SCM says it runs.
pub fn start(program: &Program) -> anyhow::Result<()> {
    let service = open(program, ServiceAccess::START | ServiceAccess::QUERY_STATUS)?;
    service
        .start::<&OsStr>(&[])
        .with_context(|| format!("cannot start the service `{}`", program.name))?;
    let state = wait_for(&service, ServiceState::Running, Duration::from_secs(30))?;
    println!("service `{}`: {}", program.name, state_name(state));
    Ok(())
}

/// Stops the service and waits until it has stopped.
pub fn stop(program: &Program) -> anyhow::Result<()> {
    let service = open(program, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?;
    stop_and_wait(&service, program)
}

fn stop_and_wait(
    service: &windows_service::service::Service,
    program: &Program,
) -> anyhow::Result<()> {
    service
        .stop()
        .with_context(|| format!("cannot stop the service `{}`", program.name))?;
    let state = wait_for(service, ServiceState::Stopped, Duration::from_secs(60))?;
    println!("service `{}`: {}", program.name, state_name(state));
    Ok(())
}

fn wait_for(
    service: &windows_service::service::Service,
    wanted: ServiceState,
    limit: Duration,
) -> anyhow::Result<ServiceState> {
    let deadline = Instant::now() + limit;
    loop {
        let state = service.query_status()?.current_state;
        if state == wanted || Instant::now() > deadline {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prints state, start type and command line.
pub fn status(program: &Program) -> anyhow::Result<Running> {
    let service = open(
        program,
        ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
    )?;
    let status = service.query_status()?;
    let config = service.query_config()?;
    let start = match config.start_type {
        ServiceStartType::AutoStart => "automatic",
        ServiceStartType::OnDemand => "manual",
        ServiceStartType::Disabled => "disabled",
        ServiceStartType::SystemStart | ServiceStartType::BootStart => "driver",
    };
    let pid = status
        .process_id
        .map(|pid| format!(", pid {pid}"))
        .unwrap_or_default();
    println!(
        "service `{}`: {}{pid}, start {start}",
        program.name,
        state_name(status.current_state)
    );
    println!("  command: {}", config.executable_path.display());
    println!("  logs:    {}", log_file(program).display());
    Ok(if status.current_state == ServiceState::Running {
        Running::Yes
    } else {
        Running::No
    })
}

fn state_name(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Stopped => "stopped",
        ServiceState::StartPending => "starting",
        ServiceState::StopPending => "stopping",
        ServiceState::Running => "running",
        ServiceState::ContinuePending => "resuming",
        ServiceState::PausePending => "pausing",
        ServiceState::Paused => "paused",
    }
}

/// The program's body, run by the service's main thread once `Running` is reported; it
/// returns when the shutdown future it is given resolves.
type Body = Box<dyn FnOnce(Shutdown) -> anyhow::Result<()> + Send>;

/// The future a body waits on: resolves when the SCM asks the service to stop.
pub type Shutdown = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

static SERVICE: OnceLock<(Program, Mutex<Option<Body>>)> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Runs `body` as the service `program.name` under the SCM: logs go to the Event Log and the
/// log file, `Running` is reported at once, and the SCM's stop or shutdown resolves the body's
/// shutdown future. Blocks until the service has stopped.
pub fn run_service(
    program: Program,
    log_level: &str,
    body: impl FnOnce(Shutdown) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    init_logging(&program, log_level)?;
    let body: Body = Box::new(body);
    SERVICE
        .set((program, Mutex::new(Some(body))))
        .map_err(|_| anyhow::anyhow!("the service is already running"))?;
    service_dispatcher::start(program.name, ffi_service_main).with_context(|| {
        format!(
            "cannot connect to the service control manager: `service run` is started by it, \
             not by hand (use `{} service start`)",
            program.name
        )
    })
}

fn service_main(_arguments: Vec<OsString>) {
    let Some((program, body)) = SERVICE.get() else {
        return;
    };
    let Some(body) = body.lock().ok().and_then(|mut body| body.take()) else {
        return;
    };
    if let Err(error) = serve(program, body) {
        tracing::error!(error = %format!("{error:#}"), "the service failed");
    }
}

fn serve(program: &Program, body: Body) -> anyhow::Result<()> {
    // The handler runs on the SCM's thread; a watch channel wakes the body's future.
    let (stop_sender, mut stop_receiver) = tokio::sync::watch::channel(false);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            let _ = stop_sender.send(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status_handle = service_control_handler::register(program.name, handler)
        .context("cannot register the service control handler")?;
    let status = |state, controls, exit_code| ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: controls,
        exit_code,
        checkpoint: 0,
        wait_hint: Duration::ZERO,
        process_id: None,
    };
    // Running at once: the config, the runtime and the state come after, in the body.
    status_handle.set_service_status(status(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        ServiceExitCode::NO_ERROR,
    ))?;
    tracing::info!(service = program.name, "service running, starting up");

    let shutdown: Shutdown = Box::pin(async move {
        let _ = stop_receiver.wait_for(|stopping| *stopping).await;
    });
    let outcome = body(shutdown);
    let exit_code = match &outcome {
        Ok(()) => ServiceExitCode::NO_ERROR,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "stopped on an error");
            // A service-specific code makes the SCM apply the restart actions.
            ServiceExitCode::ServiceSpecific(1)
        }
    };
    status_handle.set_service_status(status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        exit_code,
    ))?;
    Ok(())
}

/// Logs to the Event Log (source `program.name`, registered by `install`) and to the log
/// file, both at `log_level`.
fn init_logging(program: &Program, log_level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let path = log_file(program);
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create `{}`", directory.display()))?;
    }
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_FILE_LIMIT) {
        let _ = std::fs::rename(&path, path.with_extension("log.old"));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the log file `{}`", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_new(log_level)
        .with_context(|| format!("invalid log level `{log_level}`"))?;
    let event_log = eventlog::EventLog::new(program.name, log::Level::Info).ok();
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(Mutex::new(file)),
        )
        .with(event_log.map(|log| EventLogLayer { log }))
        .try_init()
        .context("cannot set up logging")?;
    Ok(())
}

/// A tracing layer writing info, warnings and errors to the Event Log.
struct EventLogLayer {
    log: eventlog::EventLog,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLogLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => log::Level::Error,
            tracing::Level::WARN => log::Level::Warn,
            tracing::Level::INFO => log::Level::Info,
            // Debug and trace stay in the file: the Event Log is for operators.
            _ => return,
        };
        let mut text = TextVisitor::default();
        event.record(&mut text);
        let message = text.finish();
        log::Log::log(
            &self.log,
            &log::Record::builder()
                .level(level)
                .target(event.metadata().target())
                .args(format_args!("{message}"))
                .build(),
        );
    }
}

/// `message key=value key=value`, as the file log writes it.
#[derive(Default)]
struct TextVisitor {
    message: String,
    fields: String,
}

impl TextVisitor {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl tracing::field::Visit for TextVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}
