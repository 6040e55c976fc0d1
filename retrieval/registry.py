"""Feast's file registry, written so that a crash never leaves half of it.

Feast's `FileRegistryStore` rewrites the registry file in place: a `kill -9` during `ttr apply`
or `ttr materialize` (which records each view's interval) would leave a truncated protobuf and
a repository no command can open. This store writes a new file and renames it over the old one.
`retrieval.store.repo_config` names it as the registry's store type.
"""

from __future__ import annotations

import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

from retrieval import atomic


class AtomicFileRegistryStore(FileRegistryStore):
    def _write_registry(self, registry_proto: RegistryProto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        atomic.write(registry_proto.SerializeToString(), self._filepath)
