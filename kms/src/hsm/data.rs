//! Data objects: small non-secret values the token keeps where a database
//! administrator cannot rewrite them (the audit chains' anchors). Private, so
//! only a logged-in user reads or writes them; never keys.

use cryptoki::object::{Attribute, AttributeType, ObjectClass};

use super::HsmError;
use super::lock;
use super::session::HsmSession;
use super::spec::ObjectId;

/// A data object as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataObject {
    /// Its `CKA_ID`.
    pub id: ObjectId,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_VALUE`: the data (never a key).
    pub value: Vec<u8>,
}

impl HsmSession<'_> {
    /// Creates a private token data object of `application` with a fresh
    /// `CKA_ID`, and returns the id.
    pub fn create_data(
        &self,
        application: &str,
        label: &str,
        value: &[u8],
    ) -> Result<ObjectId, HsmError> {
        let id = self.new_object_id()?;
        self.create_data_with_id(id, application, label, value)?;
        Ok(id)
    }

    /// As [`HsmSession::create_data`], with a chosen `CKA_ID`.
    pub fn create_data_with_id(
        &self,
        id: ObjectId,
        application: &str,
        label: &str,
        value: &[u8],
    ) -> Result<(), HsmError> {
        let handle = self.session.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(true),
            Attribute::Id(id.0.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Application(application.as_bytes().to_vec()),
            Attribute::Value(value.to_vec()),
        ])?;
        lock(&self.inner.handles).insert(id, handle);
        Ok(())
    }

    /// Replaces a data object's value.
    pub fn set_data(&self, id: &ObjectId, value: &[u8]) -> Result<(), HsmError> {
        self.with_key(id, |h| {
            Ok(self
                .session
                .update_attributes(h, &[Attribute::Value(value.to_vec())])?)
        })
    }

    /// Every data object of `application`.
    pub fn list_data(&self, application: &str) -> Result<Vec<DataObject>, HsmError> {
        let found = self.session.find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Application(application.as_bytes().to_vec()),
        ])?;
        let mut out = Vec::with_capacity(found.len());
        for handle in found {
            let attrs = self.session.get_attributes(
                handle,
                &[AttributeType::Id, AttributeType::Label, AttributeType::Value],
            )?;
            let (mut id, mut label, mut value) = (None, String::new(), Vec::new());
            for attr in attrs {
                match attr {
                    Attribute::Id(v) => id = v.try_into().ok().map(ObjectId),
                    Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::Value(v) => value = v,
                    _ => {}
                }
            }
            if let Some(id) = id {
                out.push(DataObject { id, label, value });
            }
        }
        Ok(out)
    }
}
