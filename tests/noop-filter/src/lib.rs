//! A proxy-wasm HTTP filter that does nothing by default: every request continues untouched.
//! `make bench` runs it to measure the cost of having a wasm VM in the chain at all (the floor
//! layergate is compared against).
//!
//! Its configuration can name host calls to make on every request, comma-separated, so the
//! bench can price each kind of call on the machine it runs on:
//! `read` (the whole request header map, as layergate reads it), `write` (replace one
//! header), `property` (set a filter-state property, as layergate does for the access log).

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};
    use std::rc::Rc;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { calls: Rc::new(Vec::new()) }) });
    }}

    #[derive(Clone, Copy)]
    enum Call {
        Read,
        Write,
        Property,
    }

    struct Root {
        calls: Rc<Vec<Call>>,
    }

    struct Probe {
        calls: Rc<Vec<Call>>,
    }

    impl Context for Root {}
    impl Context for Probe {}

    impl HttpContext for Probe {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            for (i, call) in self.calls.iter().enumerate() {
                match call {
                    Call::Read => {
                        let _ = self.get_http_request_headers_bytes();
                    }
                    Call::Write => {
                        self.set_http_request_header(
                            if i % 2 == 0 { "x-probe-a" } else { "x-probe-b" },
                            Some("1"),
                        );
                    }
                    Call::Property => {
                        self.set_property(vec!["wasm", "probe"], Some(b"principal=probe"));
                    }
                }
            }
            Action::Continue
        }
    }

    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            let config = self.get_plugin_configuration().unwrap_or_default();
            let mut calls = Vec::new();
            for word in String::from_utf8_lossy(&config)
                .split(',')
                .map(str::trim)
                .filter(|w| !w.is_empty())
            {
                calls.push(match word {
                    "read" => Call::Read,
                    "write" => Call::Write,
                    "property" => Call::Property,
                    _ => return false,
                });
            }
            self.calls = Rc::new(calls);
            true
        }

        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Probe {
                calls: self.calls.clone(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }
}
