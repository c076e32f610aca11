module github.com/rotate-certs/kubectl-rotate-certs

go 1.26.8

require (
	github.com/spf13/cobra v1.10.2
	k8s.io/cli-runtime v0.34.4
)

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
)
