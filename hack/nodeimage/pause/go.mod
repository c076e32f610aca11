// Module pause builds the pod sandbox ("pause") binary for the node image.
module rotate-certs.local/nodeimage/pause

go 1.24.0
