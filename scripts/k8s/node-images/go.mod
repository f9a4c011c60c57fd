// The two programs the test node's FROM-scratch images need besides
// Sluice's and NATS's: the pod sandbox's pause process and the `wget` that
// the chart's `helm test` Pod runs. Standard library only.
module sluice/scripts/k8s/nodeimages

go 1.26.0
