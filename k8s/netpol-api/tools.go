//go:build tools

// Package tools keeps the pinned module (and the go.sum lines of what its conformance
// suite needs) in this module's graph; nothing here is built.
package tools

import (
	_ "sigs.k8s.io/network-policy-api/apis/v1beta1"
	_ "sigs.k8s.io/network-policy-api/conformance/utils/suite"
)
