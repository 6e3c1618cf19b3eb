from circuit_plasticity.cli import main

main()
