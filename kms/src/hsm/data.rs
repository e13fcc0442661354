//! Data objects: small non-secret values the token keeps where a database
//! administrator cannot rewrite them (the audit chains' anchors). Private, so
//! only a logged-in user reads or writes them; never keys. Data objects have no
//! `CKA_ID`, and SoftHSM2 refuses to change a data object's `CKA_VALUE`: an
//! object is named by its application and its (fixed) value, and what changes is
//! its `CKA_LABEL`, which every module lets the owner modify. Handles are cached
//! by name.

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use super::HsmError;
use super::lock;
use super::session::HsmSession;

/// A data object as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataObject {
    /// `CKA_LABEL`: the changing part.
    pub label: String,
    /// `CKA_VALUE`: its name (never a key).
    pub value: Vec<u8>,
}

impl HsmSession<'_> {
    /// Creates a private token data object of `application` named `name`, with
    /// `label`.
    pub fn create_data(&self, application: &str, name: &str, label: &str) -> Result<(), HsmError> {
        let _timer = self.timer("data");
        let handle = self.session.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Application(application.as_bytes().to_vec()),
            Attribute::Value(name.as_bytes().to_vec()),
        ])?;
        lock(&self.inner.data_handles).insert(name.to_string(), handle);
        Ok(())
    }

    /// Sets the label of the data object of `application` named `name`.
    pub fn relabel_data(&self, application: &str, name: &str, label: &str) -> Result<(), HsmError> {
        let _timer = self.timer("data");
        let set = |h: ObjectHandle| {
            self.session
                .update_attributes(h, &[Attribute::Label(label.as_bytes().to_vec())])
                .map_err(HsmError::from)
        };
        let cached = lock(&self.inner.data_handles).get(name).copied();
        if let Some(h) = cached {
            match set(h) {
                Err(e) if e.rv() == Some(RvError::ObjectHandleInvalid) => {
                    lock(&self.inner.data_handles).remove(name);
                }
                other => return other,
            }
        }
        let h = self.find_data(application, name)?;
        set(h)?;
        lock(&self.inner.data_handles).insert(name.to_string(), h);
        Ok(())
    }

    fn find_data(&self, application: &str, name: &str) -> Result<ObjectHandle, HsmError> {
        let found = self.session.find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Application(application.as_bytes().to_vec()),
            Attribute::Value(name.as_bytes().to_vec()),
        ])?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(HsmError::DataObjectNotFound(name.to_string())),
            many => Err(HsmError::AmbiguousDataObject {
                name: name.to_string(),
                count: many.len(),
            }),
        }
    }

    /// Every data object of `application`. An object another session removes
    /// or replaces between the search and the read invalidates its handle: the
    /// listing is then taken again (at most three times).
    pub fn list_data(&self, application: &str) -> Result<Vec<DataObject>, HsmError> {
        let mut tries = 0;
        loop {
            match self.list_data_once(application) {
                Err(e) if e.rv() == Some(RvError::ObjectHandleInvalid) && tries < 2 => tries += 1,
                other => return other,
            }
        }
    }

    fn list_data_once(&self, application: &str) -> Result<Vec<DataObject>, HsmError> {
        let found = self.session.find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Application(application.as_bytes().to_vec()),
        ])?;
        let mut out = Vec::with_capacity(found.len());
        for handle in found {
            let attrs = self
                .session
                .get_attributes(handle, &[AttributeType::Label, AttributeType::Value])?;
            let (mut label, mut value) = (String::new(), Vec::new());
            for attr in attrs {
                match attr {
                    Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::Value(v) => value = v,
                    _ => {}
                }
            }
            out.push(DataObject { label, value });
        }
        Ok(out)
    }
}
