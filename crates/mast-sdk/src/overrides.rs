//! An operator's weight and enabled on an instance, kept when the instance registers again
//! (see [`mast_model::overrides`]).

use bytes::Bytes;
use mast_model::{
    Instance, InstanceOverride, apply_override, check_name, instance_key, override_key,
};
use mast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op,
};
use mast_proto::mvccpb::KeyValue;

use crate::client::{Client, Error, Result};

/// Attempts of an optimistic write before [`Error::Conflict`].
const ATTEMPTS: usize = 5;

fn get_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })),
    }
}

fn put_op(key: &str, value: Vec<u8>, keep_lease: bool) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: value.into(),
            ignore_lease: keep_lease,
            ..Default::default()
        })),
    }
}

fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            },
        )),
    }
}

fn mod_is(key: &str, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::new(),
        target_union: Some(TargetUnion::ModRevision(rev)),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Client {
    /// Reads the instance key and the override key of `service`/`id` in one consistent read.
    async fn instance_and_override(
        &self,
        service: &str,
        id: &str,
    ) -> Result<(Option<KeyValue>, Option<KeyValue>)> {
        let resp = self
            .txn(TxnRequest {
                success: vec![
                    get_op(&instance_key(service, id)),
                    get_op(&override_key(service, id)),
                ],
                ..Default::default()
            })
            .await?;
        let mut kvs = resp.responses.into_iter().map(|r| match r.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        });
        Ok((kvs.next().flatten(), kvs.next().flatten()))
    }

    /// The operator's override on instance `id` of `service`, if there is one.
    ///
    /// # Errors
    /// A bad name, a stored value that is not override JSON, or the server's error.
    pub async fn instance_override(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<InstanceOverride>> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        let (_, ov) = self.instance_and_override(service, id).await?;
        ov.map(|kv| {
            InstanceOverride::from_json(&kv.value).map_err(|e| Error::Data {
                key: override_key(service, id),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    /// Sets an operator's `weight` and / or `enabled` (`None`: left as it is) on instance `id`
    /// of `service`: stored at `/instance-overrides/<service>/<id>` and put in force on the
    /// instance's JSON in one Txn, as `PATCH /mast/v1/services/{s}/instances/{id}` does. The
    /// values stay in force when the instance registers again, until
    /// [`Client::clear_instance_override`]. Returns the instance as it now is.
    ///
    /// # Errors
    /// A bad name or weight (negative or not finite), [`Error::NotFound`] when the instance is
    /// not registered, [`Error::Data`] when its value is not instance JSON,
    /// [`Error::Conflict`] when it kept changing, or the server's error.
    pub async fn set_instance_override(
        &self,
        service: &str,
        id: &str,
        weight: Option<f64>,
        enabled: Option<bool>,
    ) -> Result<Instance> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        if let Some(w) = weight
            && !(w.is_finite() && w >= 0.0)
        {
            return Err(Error::Invalid("weight must be a finite number >= 0".into()));
        }
        let key = instance_key(service, id);
        let okey = override_key(service, id);
        for _ in 0..ATTEMPTS {
            let (Some(kv), okv) = self.instance_and_override(service, id).await? else {
                return Err(Error::NotFound(format!(
                    "instance {id:?} of service {service:?} is not registered"
                )));
            };
            let mut inst = Instance::from_json(&kv.value).map_err(|e| Error::Data {
                key: key.clone(),
                message: e.to_string(),
            })?;
            let orev = okv.as_ref().map_or(0, |o| o.mod_revision);
            let mut ov = okv
                .and_then(|o| InstanceOverride::from_json(&o.value).ok())
                .unwrap_or_default();
            if weight.is_some() {
                ov.weight = weight;
            }
            if enabled.is_some() {
                ov.enabled = enabled;
            }
            ov.set_by = self.user().unwrap_or_default().to_string();
            ov.set_at = now_ms();
            apply_override(&mut inst, Some(&ov));
            let resp = self
                .txn(TxnRequest {
                    compare: vec![mod_is(&key, kv.mod_revision), mod_is(&okey, orev)],
                    success: vec![
                        put_op(&key, inst.to_json(), true),
                        put_op(&okey, ov.to_json(), false),
                    ],
                    failure: Vec::new(),
                })
                .await?;
            if resp.succeeded {
                return Ok(inst);
            }
        }
        Err(Error::Conflict(key))
    }

    /// Clears the operator's override on instance `id` of `service`; the instance, if
    /// registered, gets back the weight and enabled it registered with, in the same Txn.
    /// Returns whether there was an override.
    ///
    /// # Errors
    /// A bad name, [`Error::Conflict`] when the instance kept changing, or the server's error.
    pub async fn clear_instance_override(&self, service: &str, id: &str) -> Result<bool> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        let key = instance_key(service, id);
        let okey = override_key(service, id);
        for _ in 0..ATTEMPTS {
            let (kv, okv) = self.instance_and_override(service, id).await?;
            let Some(okv) = okv else {
                return Ok(false);
            };
            let mut compare = vec![mod_is(&okey, okv.mod_revision)];
            let mut success = vec![delete_op(&okey)];
            match kv {
                Some(kv) => {
                    compare.push(mod_is(&key, kv.mod_revision));
                    if let Ok(mut inst) = Instance::from_json(&kv.value)
                        && apply_override(&mut inst, None)
                    {
                        success.push(put_op(&key, inst.to_json(), true));
                    }
                }
                None => compare.push(mod_is(&key, 0)),
            }
            let resp = self
                .txn(TxnRequest {
                    compare,
                    success,
                    failure: Vec::new(),
                })
                .await?;
            if resp.succeeded {
                return Ok(true);
            }
        }
        Err(Error::Conflict(key))
    }
}
