"""catalog: a provenance and data-catalog job manager for scientific pipelines."""

from catalog.catalog import Catalog
from catalog.errors import CatalogError
from catalog.jobs import ManagedPipelineJob, ManagedPipelineJobInstance

__all__ = ["Catalog", "CatalogError", "ManagedPipelineJob", "ManagedPipelineJobInstance"]
__version__ = "0.1.0"
