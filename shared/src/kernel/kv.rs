//! The one small key-value interface (rebuildable data only: caches, snapshots,
//! the latest report), over Spin's `fermyon:spin/key-value@2.0.0` (feature
//! `spin`) and an in-memory map for native tests.

/// A key-value failure (the store is a cache: callers log it and go on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub trait Kv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    fn delete(&self, key: &str) -> Result<(), KvError>;
}

/// An in-process map, for tests and native tools.
#[derive(Debug, Default)]
pub struct MemoryKv(std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>);

impl Kv for MemoryKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .0
            .lock()
            .map_err(|_| KvError("poisoned".into()))?
            .get(key)
            .cloned())
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.0
            .lock()
            .map_err(|_| KvError("poisoned".into()))?
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.0
            .lock()
            .map_err(|_| KvError("poisoned".into()))?
            .remove(key);
        Ok(())
    }
}

#[cfg(feature = "spin")]
pub mod spin {
    //! Spin's key-value store (label listed in the component's `key_value_stores`).
    use super::{Kv, KvError};

    pub struct SpinKv(spin_sdk::key_value::Store);

    impl SpinKv {
        pub fn open(label: &str) -> Result<SpinKv, KvError> {
            spin_sdk::key_value::Store::open(label)
                .map(SpinKv)
                .map_err(|e| KvError(format!("cannot open key-value store '{label}': {e:?}")))
        }
    }

    impl Kv for SpinKv {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
            self.0.get(key).map_err(|e| KvError(format!("{e:?}")))
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
            self.0
                .set(key, value)
                .map_err(|e| KvError(format!("{e:?}")))
        }
        fn delete(&self, key: &str) -> Result<(), KvError> {
            self.0.delete(key).map_err(|e| KvError(format!("{e:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kv_round_trip() {
        let kv = MemoryKv::default();
        assert_eq!(kv.get("a").unwrap(), None);
        kv.set("a", b"1").unwrap();
        assert_eq!(kv.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        kv.delete("a").unwrap();
        assert_eq!(kv.get("a").unwrap(), None);
    }
}
