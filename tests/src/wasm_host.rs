//! A minimal proxy-wasm host (ABI 0.2.1) on wasmtime that loads the built filter and drives
//! requests through it, without Envoy. No global state: one [`FilterHost`] owns one wasmtime
//! `Store`, so tests run in parallel.
//!
//! It implements what the Rust SDK imports: logging, buffers (plugin configuration, request
//! body), header maps, local replies, properties, metrics, time, ticks, and the handful of
//! WASI calls a `wasm32-wasip1` module makes (environment, clock, random, stdout). Any other
//! import is linked to a function that traps with its name, so an unexpected host call fails
//! loudly instead of silently.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use wasmtime::{
    Caller, Config, Engine, Extern, Instance, Linker, Memory, Module, Store, TypedFunc,
};

/// proxy-wasm status codes.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const CAS_MISMATCH: i32 = 8;

/// proxy-wasm buffer types used here.
const HTTP_REQUEST_BODY: i32 = 0;
const HTTP_CALL_RESPONSE_BODY: i32 = 4;
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;

/// proxy-wasm map type of the request headers.
const HTTP_REQUEST_HEADERS: i32 = 0;
const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// Status code.
    pub status: u32,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request continued, with the header map as the filter left it.
    Forwarded {
        /// Request headers after the filter.
        headers: Vec<(String, String)>,
    },
    /// The filter answered.
    LocalReply(LocalReply),
}

/// A request to drive through the filter.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Headers including `:method` and `:path`.
    pub headers: Vec<(String, String)>,
    /// Body, delivered in one piece at end of stream (as Envoy's buffer filter would).
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// A request with `:method`, `:path` and `:authority`.
    pub fn new(method: &str, path: &str) -> Request {
        let headers = vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), "gateway".into()),
        ];
        Request {
            headers,
            body: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }
}

/// Host-side state of one VM.
/// Shared data of one process's VMs: key → (value, CAS token).
type SharedData = std::sync::Arc<std::sync::Mutex<HashMap<String, (Vec<u8>, u32)>>>;

#[derive(Default)]
struct HostState {
    plugin_config: Vec<u8>,
    env: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    reply: Option<LocalReply>,
    logs: Vec<String>,
    metrics: Vec<(String, i64)>,
    properties: HashMap<String, Vec<u8>>,
    now_nanos: u64,
    /// `dispatch_http_call`s made, in order.
    calls: Vec<HttpCall>,
    /// The answer being delivered to `proxy_on_http_call_response`.
    call_response: (Vec<(String, String)>, Vec<u8>),
    /// Metered VMs: each host call of the current export call, with the fuel used before it.
    marks: Vec<(&'static str, u64)>,
    /// Shared data (key → value, CAS token), as Envoy keeps it for the VMs of one VM id:
    /// hosts made to share it ([`FilterHost::share_data_with`]) are one process's VMs.
    shared: SharedData,
}

/// Notes a host call and the fuel the export call had used when it was made (metered VMs).
fn mark(caller: &mut Caller<'_, HostState>, name: &'static str) {
    if let Ok(left) = caller.get_fuel() {
        caller.data_mut().marks.push((name, FUEL - left));
    }
}

/// A `dispatch_http_call` the filter made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token the host gave it.
    pub token: u32,
    /// The Envoy cluster it went to.
    pub upstream: String,
    /// Its headers (`:method`, `:path`, …).
    pub headers: Vec<(String, String)>,
    /// Its timeout in milliseconds.
    pub timeout_ms: u32,
}

impl HttpCall {
    /// A header value by (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One loaded filter VM.
pub struct FilterHost {
    store: Store<HostState>,
    instance: Instance,
    next_context: i32,
    metered: bool,
    /// Fuel each export call of the current request consumed, in call order.
    fuel: Vec<(&'static str, u64)>,
    /// The host calls of the last metered export call, with the fuel used before each.
    marks: Vec<(&'static str, u64)>,
}

/// Fuel a metered VM starts with: far more than any test spends.
const FUEL: u64 = u64::MAX / 2;

/// The root context id the host uses.
const ROOT: i32 = 1;

fn memory(caller: &mut Caller<'_, HostState>) -> Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => bail!("the module exports no memory"),
    }
}

fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let mem = memory(caller)?;
    let mut buf = vec![0u8; usize::try_from(len)?];
    mem.read(&*caller, usize::try_from(ptr)?, &mut buf)?;
    Ok(buf)
}

fn read_str(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<()> {
    let mem = memory(caller)?;
    mem.write(caller, usize::try_from(ptr)?, bytes)?;
    Ok(())
}

/// Copies `bytes` into guest memory allocated by `proxy_on_memory_allocate` and writes the
/// pointer and size to `ptr_ptr` / `size_ptr`.
fn give(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<()> {
    let alloc: TypedFunc<i32, i32> = match caller.get_export("proxy_on_memory_allocate") {
        Some(Extern::Func(f)) => f.typed(&*caller)?,
        _ => bail!("the module exports no proxy_on_memory_allocate"),
    };
    let len = i32::try_from(bytes.len())?;
    let ptr = alloc.call(&mut *caller, len)?;
    write(caller, ptr, bytes)?;
    write(caller, ptr_ptr, &ptr.to_le_bytes())?;
    write(caller, size_ptr, &len.to_le_bytes())
}

fn serialize(pairs: &[(String, String)]) -> Vec<u8> {
    layergate_filter::headers::serialize(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn deserialize(bytes: &[u8]) -> Vec<(String, String)> {
    layergate_filter::headers::pairs(bytes)
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn link(linker: &mut Linker<HostState>) -> Result<()> {
    let env = "env";
    linker.func_wrap(
        env,
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kn: i32,
         ptr_ptr: i32,
         size_ptr: i32,
         cas_ptr: i32|
         -> Result<i32> {
            mark(&mut c, "proxy_get_shared_data");
            let key = read_str(&mut c, kp, kn)?;
            let value = c
                .data()
                .shared
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .get(&key)
                .cloned();
            match value {
                Some((value, cas)) => {
                    give(&mut c, &value, ptr_ptr, size_ptr)?;
                    write(&mut c, cas_ptr, &cas.to_le_bytes())?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kn: i32,
         vp: i32,
         vn: i32,
         cas: i32|
         -> Result<i32> {
            mark(&mut c, "proxy_set_shared_data");
            let key = read_str(&mut c, kp, kn)?;
            let value = read(&mut c, vp, vn)?;
            let mut shared = c
                .data()
                .shared
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            let current = shared.get(&key).map_or(0, |(_, cas)| *cas);
            // Envoy's CAS: 0 sets whatever is there; another token must be the current one.
            if cas != 0 && u32::try_from(cas).ok() != Some(current) {
                return Ok(CAS_MISMATCH);
            }
            shared.insert(key, (value, current.wrapping_add(1).max(1)));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, p: i32, n: i32| -> Result<i32> {
            let msg = read_str(&mut c, p, n)?;
            c.data_mut().logs.push(format!("[{level}] {msg}"));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_log_level",
        |mut c: Caller<'_, HostState>, ret: i32| -> Result<i32> {
            write(&mut c, ret, &1i32.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, ret: i32| -> Result<i32> {
            mark(&mut c, "proxy_get_current_time_nanoseconds");
            let now = c.data().now_nanos;
            write(&mut c, ret, &now.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_tick_period_milliseconds",
        |_: Caller<'_, HostState>, _ms: i32| -> i32 { OK },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_effective_context",
        |_: Caller<'_, HostState>, _ctx: i32| -> i32 { OK },
    )?;
    linker.func_wrap(env, "proxy_done", |_: Caller<'_, HostState>| -> i32 { OK })?;
    linker.func_wrap(
        env,
        "proxy_continue_stream",
        |_: Caller<'_, HostState>, _t: i32| -> i32 { OK },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         kind: i32,
         start: i32,
         max: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            mark(&mut c, "proxy_get_buffer_bytes");
            // Only the slice asked for is copied (a key-service answer is read in chunks).
            let data: &[u8] = match kind {
                PLUGIN_CONFIGURATION => &c.data().plugin_config,
                VM_CONFIGURATION => &[],
                HTTP_REQUEST_BODY => &c.data().body,
                HTTP_CALL_RESPONSE_BODY => &c.data().call_response.1,
                _ => return Ok(NOT_FOUND),
            };
            let start = usize::try_from(start)?.min(data.len());
            let end = start
                .saturating_add(usize::try_from(max).unwrap_or(usize::MAX))
                .min(data.len());
            let slice = data[start..end].to_vec();
            give(&mut c, &slice, ptr_ptr, size_ptr)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, ptr_ptr: i32, size_ptr: i32| -> Result<i32> {
            mark(&mut c, "proxy_get_header_map_pairs");
            if map != HTTP_REQUEST_HEADERS {
                give(&mut c, &serialize(&[]), ptr_ptr, size_ptr)?;
                return Ok(OK);
            }
            let bytes = serialize(&c.data().headers);
            give(&mut c, &bytes, ptr_ptr, size_ptr)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, p: i32, n: i32| -> Result<i32> {
            let bytes = read(&mut c, p, n)?;
            if map == HTTP_REQUEST_HEADERS {
                c.data_mut().headers = deserialize(&bytes);
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_size",
        |mut c: Caller<'_, HostState>, _map: i32, ret: i32| -> Result<i32> {
            let size = i32::try_from(serialize(&c.data().headers).len())?;
            write(&mut c, ret, &size.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>,
         map: i32,
         kp: i32,
         kn: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            mark(&mut c, "proxy_get_header_map_value");
            let key = read_str(&mut c, kp, kn)?.to_ascii_lowercase();
            let data = c.data();
            let headers = if map == HTTP_CALL_RESPONSE_HEADERS {
                &data.call_response.0
            } else {
                &data.headers
            };
            let value = headers
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone());
            match value {
                Some(v) => {
                    give(&mut c, v.as_bytes(), ptr_ptr, size_ptr)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>,
         _map: i32,
         kp: i32,
         kn: i32,
         vp: i32,
         vn: i32|
         -> Result<i32> {
            mark(&mut c, "proxy_replace_header_map_value");
            let (key, value) = (
                read_str(&mut c, kp, kn)?.to_ascii_lowercase(),
                read_str(&mut c, vp, vn)?,
            );
            let headers = &mut c.data_mut().headers;
            headers.retain(|(k, _)| *k != key);
            headers.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>,
         _map: i32,
         kp: i32,
         kn: i32,
         vp: i32,
         vn: i32|
         -> Result<i32> {
            let (key, value) = (
                read_str(&mut c, kp, kn)?.to_ascii_lowercase(),
                read_str(&mut c, vp, vn)?,
            );
            c.data_mut().headers.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, _map: i32, kp: i32, kn: i32| -> Result<i32> {
            mark(&mut c, "proxy_remove_header_map_value");
            let key = read_str(&mut c, kp, kn)?.to_ascii_lowercase();
            c.data_mut().headers.retain(|(k, _)| *k != key);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         status: i32,
         _dp: i32,
         _dn: i32,
         bp: i32,
         bn: i32,
         hp: i32,
         hn: i32,
         _grpc: i32|
         -> Result<i32> {
            mark(&mut c, "proxy_send_local_response");
            let body = read(&mut c, bp, bn)?;
            let headers = deserialize(&read(&mut c, hp, hn)?);
            c.data_mut().reply = Some(LocalReply {
                status: u32::try_from(status)?,
                headers,
                body,
            });
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_property",
        |mut c: Caller<'_, HostState>,
         pp: i32,
         pn: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> Result<i32> {
            let path = read_str(&mut c, pp, pn)?;
            match c.data().properties.get(&path).cloned() {
                Some(v) => {
                    give(&mut c, &v, ptr_ptr, size_ptr)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_property",
        |mut c: Caller<'_, HostState>, pp: i32, pn: i32, vp: i32, vn: i32| -> Result<i32> {
            mark(&mut c, "proxy_set_property");
            let (path, value) = (read_str(&mut c, pp, pn)?, read(&mut c, vp, vn)?);
            c.data_mut().properties.insert(path, value);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, _kind: i32, np: i32, nn: i32, ret: i32| -> Result<i32> {
            let name = read_str(&mut c, np, nn)?;
            let metrics = &mut c.data_mut().metrics;
            let id = match metrics.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    metrics.push((name, 0));
                    metrics.len() - 1
                }
            };
            write(&mut c, ret, &u32::try_from(id)?.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, by: i64| -> i32 {
            match c
                .data_mut()
                .metrics
                .get_mut(usize::try_from(id).unwrap_or(usize::MAX))
            {
                Some(m) => {
                    m.1 += by;
                    OK
                }
                None => NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, value: i64| -> i32 {
            match c
                .data_mut()
                .metrics
                .get_mut(usize::try_from(id).unwrap_or(usize::MAX))
            {
                Some(m) => {
                    m.1 = value;
                    OK
                }
                None => NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_metric",
        |mut c: Caller<'_, HostState>, id: i32, ret: i32| -> Result<i32> {
            let Some(v) = c
                .data()
                .metrics
                .get(usize::try_from(id).unwrap_or(usize::MAX))
                .map(|m| m.1)
            else {
                return Ok(NOT_FOUND);
            };
            write(&mut c, ret, &v.to_le_bytes())?;
            Ok(OK)
        },
    )?;

    let wasi = "wasi_snapshot_preview1";
    linker.func_wrap(
        wasi,
        "environ_sizes_get",
        |mut c: Caller<'_, HostState>, count_ptr: i32, size_ptr: i32| -> Result<i32> {
            let env = c.data().env.clone();
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            write(&mut c, count_ptr, &u32::try_from(env.len())?.to_le_bytes())?;
            write(&mut c, size_ptr, &u32::try_from(size)?.to_le_bytes())?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        wasi,
        "environ_get",
        |mut c: Caller<'_, HostState>, ptrs: i32, buf: i32| -> Result<i32> {
            let env = c.data().env.clone();
            let mut offset = buf;
            for (i, (k, v)) in env.iter().enumerate() {
                let entry = format!("{k}={v}\0");
                write(&mut c, ptrs + i32::try_from(i * 4)?, &offset.to_le_bytes())?;
                write(&mut c, offset, entry.as_bytes())?;
                offset += i32::try_from(entry.len())?;
            }
            Ok(0)
        },
    )?;
    linker.func_wrap(
        wasi,
        "fd_write",
        |mut c: Caller<'_, HostState>,
         _fd: i32,
         iovs: i32,
         count: i32,
         written: i32|
         -> Result<i32> {
            let mut total = 0i32;
            for i in 0..count {
                let iov = read(&mut c, iovs + i * 8, 8)?;
                let (p, n) = (
                    i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]),
                    i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]),
                );
                let text = read_str(&mut c, p, n)?;
                c.data_mut().logs.push(text);
                total += n;
            }
            write(&mut c, written, &total.to_le_bytes())?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        wasi,
        "clock_time_get",
        |mut c: Caller<'_, HostState>, _id: i32, _precision: i64, ret: i32| -> Result<i32> {
            let now = c.data().now_nanos;
            write(&mut c, ret, &now.to_le_bytes())?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        wasi,
        "random_get",
        |mut c: Caller<'_, HostState>, buf: i32, len: i32| -> Result<i32> {
            // Deterministic bytes: the filter's hash maps only need *some* seed.
            let bytes: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
                .collect();
            write(&mut c, buf, &bytes)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         up: i32,
         un: i32,
         hp: i32,
         hn: i32,
         _bp: i32,
         _bn: i32,
         _tp: i32,
         _tn: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> Result<i32> {
            let upstream = read_str(&mut c, up, un)?;
            let headers = deserialize(&read(&mut c, hp, hn)?);
            let token = u32::try_from(c.data().calls.len())? + 1;
            c.data_mut().calls.push(HttpCall {
                token,
                upstream,
                headers,
                timeout_ms: u32::try_from(timeout_ms).unwrap_or(0),
            });
            write(&mut c, token_ptr, &token.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        wasi,
        "proc_exit",
        |_: Caller<'_, HostState>, code: i32| -> Result<()> {
            Err(anyhow!("the module called proc_exit({code})"))
        },
    )?;
    Ok(())
}

/// A compiled filter module. Compiling is the slow part; share one across hosts.
#[derive(Clone)]
pub struct FilterModule {
    engine: Engine,
    module: Module,
    metered: bool,
}

impl FilterModule {
    /// Compiles a `.wasm` file.
    pub fn compile(wasm: &Path) -> Result<FilterModule> {
        FilterModule::build(wasm, false)
    }

    /// Compiles a `.wasm` file with wasmtime's fuel metering: every wasm instruction the
    /// filter executes costs one unit (a few, like `nop` and `drop`, none), counted per
    /// export call ([`FilterHost::request_fuel`]). Deterministic for a given `.wasm` and
    /// input, unlike time, so it can bound the filter's in-VM work in a test. Host calls are
    /// not counted (their guest side is: the argument set-up and `proxy_on_memory_allocate`).
    pub fn compile_metered(wasm: &Path) -> Result<FilterModule> {
        FilterModule::build(wasm, true)
    }

    fn build(wasm: &Path, metered: bool) -> Result<FilterModule> {
        let mut config = Config::new();
        config.consume_fuel(metered);
        let engine = Engine::new(&config)?;
        let module = Module::from_file(&engine, wasm)
            .with_context(|| format!("loading {}", wasm.display()))?;
        Ok(FilterModule {
            engine,
            module,
            metered,
        })
    }
}

impl FilterHost {
    /// Starts a VM and configures its root context. A refused configuration is an error whose
    /// text includes the filter's logs.
    pub fn load(
        module: &FilterModule,
        plugin_config: &str,
        env: &[(&str, &str)],
    ) -> Result<FilterHost> {
        let mut host = FilterHost::start(module, env)?;
        if !host.configure(plugin_config)? {
            bail!(
                "the filter refused its configuration; logs:\n{}",
                host.logs().join("\n")
            );
        }
        Ok(host)
    }

    /// Starts a VM (its own `Store`) without configuring it.
    pub fn start(module: &FilterModule, env: &[(&str, &str)]) -> Result<FilterHost> {
        let FilterModule {
            engine,
            module,
            metered,
        } = module;
        let mut linker = Linker::new(engine);
        link(&mut linker)?;
        for import in module.imports() {
            let (m, n) = (import.module().to_owned(), import.name().to_owned());
            if let wasmtime::ExternType::Func(ty) = import.ty() {
                if linker
                    .get_by_import(&mut Store::new(engine, HostState::default()), &import)
                    .is_none()
                {
                    let name = format!("{m}.{n}");
                    linker.func_new(&m, &n, ty, move |_, _, _| {
                        Err(anyhow!(
                            "the filter called {name}, which this host does not implement"
                        ))
                    })?;
                }
            }
        }
        let state = HostState {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            now_nanos: 1_795_528_719_000_000_000, // 2026-11-24
            ..HostState::default()
        };
        let mut store = Store::new(engine, state);
        if *metered {
            store.set_fuel(FUEL)?;
        }
        let instance = linker.instantiate(&mut store, module)?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())?;
        }
        let mut host = FilterHost {
            store,
            instance,
            next_context: ROOT + 1,
            metered: *metered,
            fuel: Vec::new(),
            marks: Vec::new(),
        };
        host.call_if_exported::<(i32, i32), ()>("proxy_on_context_create", (ROOT, 0))?;
        if host.call::<(i32, i32), i32>("proxy_on_vm_start", (ROOT, 0))? == 0 {
            bail!("proxy_on_vm_start returned false");
        }
        Ok(host)
    }

    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &'static str,
        params: P,
    ) -> Result<R> {
        let f = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .with_context(|| format!("export {name}"))?;
        if !self.metered {
            return f
                .call(&mut self.store, params)
                .with_context(|| format!("calling {name}"));
        }
        self.store.set_fuel(FUEL)?;
        self.store.data_mut().marks.clear();
        let result = f.call(&mut self.store, params);
        let used = FUEL - self.store.get_fuel()?;
        self.fuel.push((name, used));
        let marks = std::mem::take(&mut self.store.data_mut().marks);
        self.marks.extend(marks);
        self.marks.push((name, used));
        result.with_context(|| format!("calling {name}"))
    }

    /// Calls an optional export; nothing when the module does not export it.
    fn call_if_exported<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &'static str,
        params: P,
    ) -> Result<Option<R>> {
        if self.instance.get_func(&mut self.store, name).is_none() {
            return Ok(None);
        }
        self.call(name, params).map(Some)
    }

    /// Size of the VM's linear memory, in bytes: what one copy of the filter holds (it never
    /// shrinks, so this is the high-water mark).
    pub fn memory_bytes(&mut self) -> Result<usize> {
        let memory = self
            .instance
            .get_memory(&mut self.store, "memory")
            .context("the filter exports no memory")?;
        Ok(memory.data_size(&self.store))
    }

    /// Delivers a plugin configuration; returns what `proxy_on_configure` answered.
    pub fn configure(&mut self, plugin_config: &str) -> Result<bool> {
        self.store.data_mut().plugin_config = plugin_config.as_bytes().to_vec();
        let size = i32::try_from(plugin_config.len())?;
        Ok(self.call::<(i32, i32), i32>("proxy_on_configure", (ROOT, size))? != 0)
    }

    /// Sets the host clock (Unix seconds).
    pub fn set_time(&mut self, unix_seconds: u64) {
        self.store.data_mut().now_nanos = unix_seconds * 1_000_000_000;
    }

    /// Runs the root context's tick (flushes the filter's counters).
    pub fn tick(&mut self) -> Result<()> {
        self.call::<i32, ()>("proxy_on_tick", ROOT)
    }

    /// Drives one request: headers, then the body (if any) at end of stream.
    pub fn request(&mut self, req: Request) -> Result<Outcome> {
        let ctx = self.next_context;
        self.next_context += 1;
        self.fuel.clear();
        self.marks.clear();
        {
            let st = self.store.data_mut();
            st.headers = req
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            st.body = req.body.clone().unwrap_or_default();
            st.reply = None;
        }
        // Callbacks a filter need not export (the SDK's dispatcher exports all of them).
        self.call_if_exported::<(i32, i32), ()>("proxy_on_context_create", (ctx, ROOT))?;
        let n = i32::try_from(req.headers.len())?;
        let eos = i32::from(req.body.is_none());
        let action =
            self.call::<(i32, i32, i32), i32>("proxy_on_request_headers", (ctx, n, eos))?;
        if self.store.data().reply.is_none() {
            if action != 0 {
                bail!("the filter paused the request headers without a reply (Envoy would stop all iteration)");
            }
            if let Some(body) = &req.body {
                let size = i32::try_from(body.len())?;
                self.call::<(i32, i32, i32), i32>("proxy_on_request_body", (ctx, size, 1))?;
            }
        }
        self.call_if_exported::<i32, ()>("proxy_on_log", ctx)?;
        self.call_if_exported::<i32, i32>("proxy_on_done", ctx)?;
        self.call_if_exported::<i32, ()>("proxy_on_delete", ctx)?;
        let st = self.store.data_mut();
        Ok(match st.reply.take() {
            Some(reply) => Outcome::LocalReply(reply),
            None => Outcome::Forwarded {
                headers: st.headers.clone(),
            },
        })
    }

    /// Fuel each callback of the last [`FilterHost::request`] consumed, in call order (the
    /// exports the filter has; empty unless the module was [`FilterModule::compile_metered`]).
    pub fn request_fuel(&self) -> &[(&'static str, u64)] {
        &self.fuel
    }

    /// The host calls of the last [`FilterHost::request`] (metered VMs), each with the fuel its
    /// export call had used before it, and after each export call its name and total: where
    /// between host calls the filter's work goes.
    pub fn host_call_marks(&self) -> &[(&'static str, u64)] {
        &self.marks
    }

    /// The `dispatch_http_call`s the filter has made so far.
    pub fn calls(&self) -> Vec<HttpCall> {
        self.store.data().calls.clone()
    }

    /// Answers call `token`: `status` (`None`: the call failed, no response) and `body`,
    /// through `proxy_on_http_call_response` on the root context.
    pub fn answer_call(&mut self, token: u32, status: Option<u16>, body: &[u8]) -> Result<()> {
        let headers: Vec<(String, String)> = status
            .map(|s| vec![(":status".to_owned(), s.to_string())])
            .unwrap_or_default();
        let n = i32::try_from(headers.len())?;
        let size = i32::try_from(body.len())?;
        self.store.data_mut().call_response = (headers, body.to_vec());
        self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            (ROOT, i32::try_from(token)?, n, size, 0),
        )
    }

    /// Makes this VM share the host's shared data with `other`, as two VMs of one Envoy
    /// process (workers) do.
    pub fn share_data_with(&mut self, other: &FilterHost) {
        self.store.data_mut().shared = other.store.data().shared.clone();
    }

    /// Everything the filter logged.
    pub fn logs(&self) -> Vec<String> {
        self.store.data().logs.clone()
    }

    /// A metric's value by name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.store
            .data()
            .metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// A property the filter set (path segments joined by NUL).
    pub fn property(&self, path: &str) -> Option<String> {
        self.store
            .data()
            .properties
            .get(path)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}
