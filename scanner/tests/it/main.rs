mod smoke {
    #[test]
    fn builds() {
        assert!(defenseclaw_scanner::Engine::builtin().is_ok());
    }
}
