"""leasewire: IP address management and pod wiring for Kubernetes."""
