//! Spin's other host interfaces (fermyon:spin@2.0.0 redis, mqtt, postgres, mysql,
//! llm), linked so that a component importing them loads as it does on Spin.
//!
//! Each answers what Spin answers when the component is not permitted: an
//! address outside `allowed_outbound_hosts` is `invalid-address` (redis) or
//! `connection-failed("address ... is not permitted")` (mqtt, postgres, mysql),
//! and a model missing from `ai_models` is `invalid-input` with Spin's message.
//! A permitted call fails with the interface's "other"/"connection failed" error
//! saying that this host has no backend for it: Waybill uses none of them, and a
//! test host must not pretend to have a Redis or a model it does not have.

use wasmtime::component::Resource;

use crate::runtime::spin_bindings::fermyon::spin::{
    llm, mqtt, mysql, postgres, rdbms_types, redis,
};
use crate::runtime::HostState;

/// The resource type of the connections: none is ever handed out.
pub struct NoConnection;

type R<T> = wasmtime::Result<T>;

impl HostState {
    /// Spin's check of a database or broker address: the URL against
    /// `allowed_outbound_hosts` with the address's own scheme.
    fn address_allowed(&self, address: &str) -> bool {
        let Ok(url) = url::Url::parse(address) else {
            return false;
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => return false,
        };
        self.comp
            .allowed_hosts
            .allows(url.scheme(), &host, url.port())
    }
}

fn never<T>() -> R<T> {
    Err(wasmtime::format_err!(
        "no connection of this kind exists on this host"
    ))
}

const NO_BACKEND: &str =
    "this host (tests/host) has no backend for this interface; run the component on Spin";

// ---- redis ----
impl redis::Host for HostState {}
impl redis::HostConnection for HostState {
    async fn open(&mut self, address: String) -> R<Result<Resource<NoConnection>, redis::Error>> {
        if !self.address_allowed(&address) {
            return Ok(Err(redis::Error::InvalidAddress));
        }
        Ok(Err(redis::Error::Other(NO_BACKEND.into())))
    }
    async fn publish(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<u8>,
    ) -> R<Result<(), redis::Error>> {
        never()
    }
    async fn get(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
    ) -> R<Result<Option<Vec<u8>>, redis::Error>> {
        never()
    }
    async fn set(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<u8>,
    ) -> R<Result<(), redis::Error>> {
        never()
    }
    async fn incr(&mut self, _: Resource<NoConnection>, _: String) -> R<Result<i64, redis::Error>> {
        never()
    }
    async fn del(
        &mut self,
        _: Resource<NoConnection>,
        _: Vec<String>,
    ) -> R<Result<u32, redis::Error>> {
        never()
    }
    async fn sadd(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<String>,
    ) -> R<Result<u32, redis::Error>> {
        never()
    }
    async fn smembers(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
    ) -> R<Result<Vec<String>, redis::Error>> {
        never()
    }
    async fn srem(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<String>,
    ) -> R<Result<u32, redis::Error>> {
        never()
    }
    async fn execute(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<redis::RedisParameter>,
    ) -> R<Result<Vec<redis::RedisResult>, redis::Error>> {
        never()
    }
    async fn drop(&mut self, _: Resource<NoConnection>) -> R<()> {
        Ok(())
    }
}

// ---- mqtt ----
impl mqtt::Host for HostState {}
impl mqtt::HostConnection for HostState {
    async fn open(
        &mut self,
        address: String,
        _username: String,
        _password: String,
        _keep_alive: u64,
    ) -> R<Result<Resource<NoConnection>, mqtt::Error>> {
        if !self.address_allowed(&address) {
            return Ok(Err(mqtt::Error::ConnectionFailed(format!(
                "address {address} is not permitted"
            ))));
        }
        Ok(Err(mqtt::Error::ConnectionFailed(NO_BACKEND.into())))
    }
    async fn publish(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<u8>,
        _: mqtt::Qos,
    ) -> R<Result<(), mqtt::Error>> {
        never()
    }
    async fn drop(&mut self, _: Resource<NoConnection>) -> R<()> {
        Ok(())
    }
}

// ---- postgres and mysql (rdbms-types) ----
impl rdbms_types::Host for HostState {}

fn rdbms_open(allowed: bool, address: &str) -> Result<Resource<NoConnection>, rdbms_types::Error> {
    if !allowed {
        return Err(rdbms_types::Error::ConnectionFailed(format!(
            "address {address} is not permitted"
        )));
    }
    Err(rdbms_types::Error::ConnectionFailed(NO_BACKEND.into()))
}

impl postgres::Host for HostState {}
impl postgres::HostConnection for HostState {
    async fn open(
        &mut self,
        address: String,
    ) -> R<Result<Resource<NoConnection>, rdbms_types::Error>> {
        Ok(rdbms_open(self.address_allowed(&address), &address))
    }
    async fn query(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<rdbms_types::ParameterValue>,
    ) -> R<Result<rdbms_types::RowSet, rdbms_types::Error>> {
        never()
    }
    async fn execute(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<rdbms_types::ParameterValue>,
    ) -> R<Result<u64, rdbms_types::Error>> {
        never()
    }
    async fn drop(&mut self, _: Resource<NoConnection>) -> R<()> {
        Ok(())
    }
}

impl mysql::Host for HostState {}
impl mysql::HostConnection for HostState {
    async fn open(
        &mut self,
        address: String,
    ) -> R<Result<Resource<NoConnection>, rdbms_types::Error>> {
        Ok(rdbms_open(self.address_allowed(&address), &address))
    }
    async fn query(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<rdbms_types::ParameterValue>,
    ) -> R<Result<rdbms_types::RowSet, rdbms_types::Error>> {
        never()
    }
    async fn execute(
        &mut self,
        _: Resource<NoConnection>,
        _: String,
        _: Vec<rdbms_types::ParameterValue>,
    ) -> R<Result<(), rdbms_types::Error>> {
        never()
    }
    async fn drop(&mut self, _: Resource<NoConnection>) -> R<()> {
        Ok(())
    }
}

// ---- llm ----
fn model_denied(model: &str) -> llm::Error {
    llm::Error::InvalidInput(format!(
        "The component does not have access to use '{model}'. To give the component access, add '{model}' to the 'ai_models' key for the component in your spin.toml manifest"
    ))
}

impl llm::Host for HostState {
    async fn infer(
        &mut self,
        model: String,
        _prompt: String,
        _params: Option<llm::InferencingParams>,
    ) -> R<Result<llm::InferencingResult, llm::Error>> {
        if !self.comp.ai_models.contains(&model) {
            return Ok(Err(model_denied(&model)));
        }
        Ok(Err(llm::Error::ModelNotSupported))
    }
    async fn generate_embeddings(
        &mut self,
        model: String,
        _text: Vec<String>,
    ) -> R<Result<llm::EmbeddingsResult, llm::Error>> {
        if !self.comp.ai_models.contains(&model) {
            return Ok(Err(model_denied(&model)));
        }
        Ok(Err(llm::Error::ModelNotSupported))
    }
}
