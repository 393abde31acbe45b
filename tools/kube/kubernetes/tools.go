//go:build tools

// Package tools pins the packages whose binaries build.sh builds, so that
// `go mod tidy` records every module they need in go.sum.
package tools

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)
