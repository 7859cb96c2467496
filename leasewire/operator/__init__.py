"""The leasewire operator: IPPool and AttachProfile resources drive ipamd, and the leases of
deleted pods and nodes go back to it. Runs with Kopf, one active replica per cluster."""
