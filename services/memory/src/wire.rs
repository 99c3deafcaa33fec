//! The memory service's wire enums and the text the database stores for them,
//! and the checks every resource shares (project scope).

use mesh_runtime::{FieldViolation, text_enum, wire::optional_uuid};
use uuid::Uuid;

pub use mesh_runtime::wire::{json_object, non_empty, required_text, text};

text_enum!(mesh_proto::mesh::memory::v1; memory_kind, MemoryKind {
    Fact => "fact", Preference => "preference", Event => "event", Goal => "goal",
    Relationship => "relationship", Emotion => "emotion", Situation => "situation",
    Routine => "routine", Struggle => "struggle", Thread => "thread",
    FollowUp => "follow_up", Pattern => "pattern", Context => "context",
    Conversation => "conversation",
});
text_enum!(mesh_proto::mesh::memory::v1; source_type, SourceType {
    Message => "message", Conversation => "conversation", Document => "document",
    Manual => "manual", Import => "import",
});
text_enum!(mesh_proto::mesh::memory::v1; entity_type, EntityType {
    Person => "person", Company => "company", Concept => "concept",
});
text_enum!(mesh_proto::mesh::memory::v1; document_type, DocumentType {
    Txt => "txt", Md => "md",
});
text_enum!(mesh_proto::mesh::memory::v1; document_status, DocumentStatus {
    Pending => "pending", Processing => "processing", Completed => "completed",
    Failed => "failed",
});
text_enum!(mesh_proto::mesh::memory::v1; extraction_type, ExtractionType {
    Context => "context", Thread => "thread",
});
text_enum!(mesh_proto::mesh::memory::v1; extraction_status, ExtractionStatus {
    Succeeded => "succeeded", Failed => "failed", Skipped => "skipped",
});

/// Which projects a read covers, checked.
#[derive(Clone, Copy, Debug, Default)]
pub enum Scope {
    /// Rows with no project (the user's everywhere).
    #[default]
    Global,
    /// The global rows and this project's.
    Project(Uuid),
    /// Every row of the user.
    All,
}

impl Scope {
    /// `field` names the ProjectScope in the request (for violations).
    pub fn check(
        field: &str,
        scope: Option<&mesh_proto::mesh::memory::v1::ProjectScope>,
    ) -> Result<Self, FieldViolation> {
        let Some(scope) = scope else {
            return Ok(Self::Global);
        };
        let project = optional_uuid(&format!("{field}.project_id"), &scope.project_id)?;
        match (project, scope.all_projects) {
            (Some(_), true) => Err(FieldViolation::new(
                format!("{field}.project_id"),
                "must be empty when all_projects is set",
            )),
            (Some(project), false) => Ok(Self::Project(project)),
            (None, true) => Ok(Self::All),
            (None, false) => Ok(Self::Global),
        }
    }

    /// SQL true for rows in scope, given the project column and the
    /// parameter (`$n`) that will be bound to [`Scope::project`].
    pub fn sql(&self, column: &str, param: &str) -> String {
        match self {
            Self::Global => format!("{column} IS NULL"),
            Self::Project(_) => format!("({column} IS NULL OR {column} = {param})"),
            Self::All => "TRUE".to_owned(),
        }
    }

    /// The value to bind for the parameter of [`Scope::sql`] (NULL when unused).
    pub fn project(&self) -> Option<Uuid> {
        match self {
            Self::Project(project) => Some(*project),
            _ => None,
        }
    }
}
