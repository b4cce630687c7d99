//! The vocabulary of facilities: what a facility is and which services it offers.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FacilityType {
    Warehouse,
    Store,
    FulfillmentCenter,
}

impl FacilityType {
    pub fn as_str(&self) -> &'static str {
        match self {
            FacilityType::Warehouse => "warehouse",
            FacilityType::Store => "store",
            FacilityType::FulfillmentCenter => "fulfillment_center",
        }
    }
    pub fn parse(s: &str) -> Option<FacilityType> {
        serde_json::from_value(Json::String(s.to_string())).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    Ship,
    ClickCollect,
}

impl Service {
    pub fn as_str(&self) -> &'static str {
        match self {
            Service::Ship => "ship",
            Service::ClickCollect => "click_collect",
        }
    }
}
