"""kube_service: Kubernetes API servers behind device trust (:mod:`.service`)."""
