//go:build tools

// Package tools pins kwok's command so that `go mod tidy` records every module it needs.
package tools

import _ "sigs.k8s.io/kwok/pkg/kwok/cmd"
