//! Stand-ins for prometheus-operator's CRDs, with the fields the chart
//! sets and their types and patterns, so that the API server checks a
//! rendering with a ServiceMonitor or a PrometheusRule (strict field
//! validation refuses any other field). Shared by the chart tests and the
//! real-node test.

/// A stand-in for prometheus-operator's ServiceMonitor CRD with the fields
/// the chart sets, so that a rendering with a ServiceMonitor can be
/// checked by the API server (strict field validation refuses any other
/// field).
pub const SERVICE_MONITOR_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: servicemonitors.monitoring.coreos.com }
spec:
  group: monitoring.coreos.com
  names: { kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [selector, endpoints]
              properties:
                selector:
                  type: object
                  properties:
                    matchLabels: { type: object, additionalProperties: { type: string } }
                namespaceSelector:
                  type: object
                  properties:
                    matchNames: { type: array, items: { type: string } }
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: { type: string }
                      path: { type: string }
                      interval: { type: string, pattern: '^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$' }
";

/// A stand-in for prometheus-operator's PrometheusRule CRD with the fields
/// the chart sets and their types and patterns, so that the API server
/// checks the rendered rules (strict field validation refuses any other
/// field).
pub const PROMETHEUS_RULE_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: prometheusrules.monitoring.coreos.com }
spec:
  group: monitoring.coreos.com
  names: { kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name, rules]
                    properties:
                      name: { type: string, minLength: 1 }
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: { type: string }
                            expr: { x-kubernetes-int-or-string: true }
                            for: { type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$' }
                            labels: { type: object, additionalProperties: { type: string } }
                            annotations: { type: object, additionalProperties: { type: string } }
";
